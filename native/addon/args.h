// JS argument objects -> the core's plain job structs. Runs on the main thread only, and checks
// every field (presence, typed-array type, lengths against the sizes) so that the core can
// trust what it is given.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "../core/projection.h"
#include "../core/propagator.h"
#include "../core/scoring.h"

namespace dvemb::addon {

// Why a conversion failed: the JS error class and its message. Pending: a JS exception (a
// throwing getter, say) is already pending and is passed on as it is.
struct ArgError {
  enum class Kind { None, Type, Range, Pending };
  Kind kind = Kind::None;
  std::string message;

  bool failed() const { return kind != Kind::None; }
  // The error as a JS value; clears the pending exception for Kind::Pending.
  Napi::Value value(Napi::Env env) const;
};

// Typed arrays a job borrows: the async workers hold references to them until they finish.
using Borrowed = std::vector<Napi::Object>;

ArgError to_threads(Napi::Value threads, int* out);
ArgError to_matrix_request(const Napi::CallbackInfo& info, ProjectionKey* key, int64_t* rows,
                           int64_t* cols);
ArgError to_kronecker_job(Napi::Value args, KroneckerJob* job, Borrowed* arrays);
ArgError to_dense_job(Napi::Value args, DenseJob* job, Borrowed* arrays);
ArgError to_propagate_job(Napi::Value args, PropagateJob* job, Borrowed* arrays);
ArgError to_score_job(Napi::Value args, ScoreJob* job, Borrowed* arrays);

}  // namespace dvemb::addon
