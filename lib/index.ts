// dvemb's public API. See README.md for a tour and docs/FORMAT.md for the files it writes.
export { DvembError, type ErrorCode } from './errors.js';
export { loadBackend, availableBackends, type BackendChoice, type BackendName, type LoadedBackend } from './backend/loader.js';
export type { Backend, BackendInfo, Distribution } from './backend/surface.js';
export { Layout, Projector, type BlockSpec, type BlockGradient, type BatchGradients, type ProjectionSpec } from './projection.js';
export { TrajectoryRecorder, type RecorderOptions, type StepRecord } from './trajectory/recorder.js';
export { Trajectory, type VerifyReport } from './trajectory/trajectory.js';
export { computeEmbeddings, type ComputeOptions, type ComputeProgress } from './embeddings/backward.js';
export { EmbeddingSet, type EmbeddingsManifest } from './embeddings/store.js';
export {
  planSegments,
  computeSegment,
  computeSegments,
  compose,
  dataValueDynamics,
  openSegments,
  segmentDirName,
  type SegmentOptions,
  type SegmentResult,
  type SegmentsOptions,
  type SegmentsResult,
  type ComposeOptions,
  type DataValueDynamics,
  type DynamicsOptions,
  type OpenSegment,
} from './embeddings/segments.js';
export {
  projectTests,
  scoreBlocks,
  perOccurrence,
  perExample,
  topK,
  influenceProfile,
  type ProjectedTests,
  type Attribution,
  type TopK,
} from './embeddings/query.js';
export { doctor } from './cli/doctor.js';
export {
  prepareReport,
  writeReport,
  buildReport,
  readReportInput,
  dynamicsFromSegments,
  DEFAULT_PHASE_RULE,
  findPhases,
  type PrepareReportOptions,
  type ReportOptions,
  type ReportSummary,
  type ReportInputFile,
  type ImageSpec,
  type Dynamics,
  type PhaseRule,
  type ReportProgress,
} from './report/report.js';
