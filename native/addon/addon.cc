// Module entry: exports the NativeAddon surface of lib/backend/surface.ts.
#include <napi.h>

#include "../addon-cuda/dispatch.h"
#include "../core/blas.h"
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonState());  // deleted when this environment is torn down

  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("projectionMatrix", Napi::Function::New(env, ProjectionMatrix, "projectionMatrix"));
  exports.Set("projectKronecker", Napi::Function::New(env, ProjectKronecker, "projectKronecker"));
  exports.Set("projectDense", Napi::Function::New(env, ProjectDense, "projectDense"));
  exports.Set("propagate", Napi::Function::New(env, Propagate, "propagate"));
  exports.Set("score", Napi::Function::New(env, Score, "score"));

  Napi::Object build = Napi::Object::New(env);
  build.Set("cuda", dispatch::kCudaBuild);
  build.Set("openblas", blas_config());
  build.Set("compiler", __VERSION__);
  exports.Set("build", build);
  return exports;
}

}  // namespace

NODE_API_MODULE(dvemb, Init)
