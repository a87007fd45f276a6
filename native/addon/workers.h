// The JS-facing functions of the addon. The four compute functions return a Promise and run
// on the libuv thread pool; argument errors reject it with a TypeError or RangeError.
#pragma once
#include <napi.h>

#include <memory>

#include "../core/projection.h"

namespace dvemb::addon {

// Per-load state (env.SetInstanceData), so each worker_thread loading the addon has its own.
struct AddonState {
  // Shared with running workers, which may outlive the environment that queued them.
  std::shared_ptr<ProjectionCache> cache = std::make_shared<ProjectionCache>();
};

Napi::Value ProjectKronecker(const Napi::CallbackInfo& info);
Napi::Value ProjectDense(const Napi::CallbackInfo& info);
Napi::Value Propagate(const Napi::CallbackInfo& info);
Napi::Value Score(const Napi::CallbackInfo& info);

}  // namespace dvemb::addon
