// Module entry: exports the NativeAddon surface of lib/backend/surface.ts.
#include <napi.h>

#include "../addon-cuda/dispatch.h"
#include "../core/blas.h"
#include "../core/checksum.h"
#include "../core/projection.h"
#include "args.h"
#include "workers.h"

namespace {

using namespace dvemb;
using namespace dvemb::addon;

// Throws a failed conversion's error (a pending one is thrown again as it was).
Napi::Value throw_error(Napi::Env env, const ArgError& error) {
  Napi::Value v = error.value(env);
  if (!env.IsExceptionPending()) Napi::Error(env, v).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const dispatch::BackendInfo backend = dispatch::backend_info();
  Napi::Object out = Napi::Object::New(env);
  out.Set("backend", backend.backend);
  out.Set("blas", backend.blas.empty() ? std::string(blas_config()) : backend.blas);
  out.Set("threads", blas_threads());
  if (!backend.device.empty()) out.Set("device", backend.device);
  return out;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  int threads = 0;
  if (ArgError e = to_threads(info[0], &threads); e.failed()) return throw_error(info.Env(), e);
  set_blas_threads(threads);
  return info.Env().Undefined();
}

Napi::Value ProjectionMatrix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ProjectionKey key;
  int64_t rows = 0, cols = 0;
  if (ArgError e = to_matrix_request(info, &key, &rows, &cols); e.failed()) {
    return throw_error(env, e);
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, static_cast<size_t>(rows * cols));
  if (env.IsExceptionPending()) return env.Undefined();  // could not allocate
  if (Error e = dispatch::projection_matrix(key, rows, cols, out.Data(), blas_threads());
      !e.empty()) {
    Napi::Error::New(env, e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return out;
}

// crc32(data, previous?) -> the running CRC-32 of a Uint8Array view, synchronously: it runs at
// memory speed, so a round trip through the thread pool would cost more than it saves.
Napi::Value Crc32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "crc32: data must be a Uint8Array (or Buffer)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t previous = 0;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    const double p = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(p >= 0 && p <= 4294967295.0 && p == static_cast<double>(static_cast<uint32_t>(p)))) {
      Napi::RangeError::New(env, "crc32: previous must be an integer in [0, 2^32)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    previous = static_cast<uint32_t>(p);
  }
  Napi::Uint8Array data = info[0].As<Napi::Uint8Array>();
  return Napi::Number::New(env, crc32(previous, data.Data(), data.ByteLength()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonState());  // deleted when this environment is torn down

  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("projectionMatrix", Napi::Function::New(env, ProjectionMatrix, "projectionMatrix"));
  exports.Set("projectKronecker", Napi::Function::New(env, ProjectKronecker, "projectKronecker"));
  exports.Set("projectDense", Napi::Function::New(env, ProjectDense, "projectDense"));
  exports.Set("propagate", Napi::Function::New(env, Propagate, "propagate"));
  exports.Set("score", Napi::Function::New(env, Score, "score"));
  exports.Set("crc32", Napi::Function::New(env, Crc32, "crc32"));

  Napi::Object build = Napi::Object::New(env);
  build.Set("cuda", dispatch::kCudaBuild);
  build.Set("openblas", blas_config());
  build.Set("compiler", __VERSION__);
  exports.Set("build", build);
  return exports;
}

}  // namespace

NODE_API_MODULE(dvemb, Init)
