#include "workers.h"

#include <utility>
#include <vector>

#include "../addon-cuda/dispatch.h"
#include "args.h"

namespace dvemb::addon {

namespace {

// Settles a promise with the outcome of Execute(). Holds references to the typed arrays the
// job points into, so they outlive the work even if the caller drops them.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name, const Borrowed& arrays)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {
    for (const auto& a : arrays) references_.push_back(Napi::Persistent(a));
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void OnOK() override { deferred_.Resolve(result(Env())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }
  virtual Napi::Value result(Napi::Env env) { return env.Undefined(); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> references_;
};

class KroneckerWorker : public PromiseWorker {
 public:
  KroneckerWorker(Napi::Env env, const KroneckerJob& job, const Borrowed& arrays,
                  std::shared_ptr<ProjectionCache> cache)
      : PromiseWorker(env, "dvemb.projectKronecker", arrays), job_(job), cache_(std::move(cache)) {
    job_.cache = cache_.get();
  }

 private:
  void Execute() override {
    if (Error e = dispatch::project_kronecker(job_); !e.empty()) SetError(e);
  }

  KroneckerJob job_;
  std::shared_ptr<ProjectionCache> cache_;
};

class DenseWorker : public PromiseWorker {
 public:
  DenseWorker(Napi::Env env, const DenseJob& job, const Borrowed& arrays)
      : PromiseWorker(env, "dvemb.projectDense", arrays), job_(job) {}

 private:
  void Execute() override {
    if (Error e = dispatch::project_dense(job_); !e.empty()) SetError(e);
  }

  DenseJob job_;
};

class PropagateWorker : public PromiseWorker {
 public:
  PropagateWorker(Napi::Env env, const PropagateJob& job, const Borrowed& arrays)
      : PromiseWorker(env, "dvemb.propagate", arrays), job_(job) {}

 private:
  void Execute() override {
    if (Error e = dispatch::propagate(job_, &bad_step_); !e.empty()) SetError(e);
  }
  Napi::Value result(Napi::Env env) override {
    return Napi::Number::New(env, static_cast<double>(bad_step_));
  }

  PropagateJob job_;
  int64_t bad_step_ = -1;
};

class ScoreWorker : public PromiseWorker {
 public:
  ScoreWorker(Napi::Env env, const ScoreJob& job, const Borrowed& arrays)
      : PromiseWorker(env, "dvemb.score", arrays), job_(job) {}

 private:
  void Execute() override {
    if (Error e = dispatch::score(job_); !e.empty()) SetError(e);
  }

  ScoreJob job_;
};

// An already rejected promise, for arguments that failed validation.
Napi::Value rejected(Napi::Env env, const ArgError& error) {
  Napi::Value reason = error.value(env);  // first: a promise cannot be made while one is pending
  auto deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(reason);
  return deferred.Promise();
}

// Converts the arguments, then queues the worker that make_worker builds from the job.
template <typename Job, typename Convert, typename Make>
Napi::Value start(const Napi::CallbackInfo& info, Convert convert, Make make_worker) {
  Napi::Env env = info.Env();
  Job job;
  Borrowed arrays;
  if (ArgError e = convert(info[0], &job, &arrays); e.failed()) return rejected(env, e);
  auto* worker = make_worker(env, job, arrays);  // deletes itself once settled
  Napi::Value promise = worker->promise();
  worker->Queue();
  return promise;
}

}  // namespace

Napi::Value ProjectKronecker(const Napi::CallbackInfo& info) {
  auto cache = info.Env().GetInstanceData<AddonState>()->cache;
  return start<KroneckerJob>(info, to_kronecker_job,
                             [&](Napi::Env env, const KroneckerJob& job, const Borrowed& a) {
                               return new KroneckerWorker(env, job, a, cache);
                             });
}

Napi::Value ProjectDense(const Napi::CallbackInfo& info) {
  return start<DenseJob>(info, to_dense_job,
                         [](Napi::Env env, const DenseJob& job, const Borrowed& a) {
                           return new DenseWorker(env, job, a);
                         });
}

Napi::Value Propagate(const Napi::CallbackInfo& info) {
  return start<PropagateJob>(info, to_propagate_job,
                             [](Napi::Env env, const PropagateJob& job, const Borrowed& a) {
                               return new PropagateWorker(env, job, a);
                             });
}

Napi::Value Score(const Napi::CallbackInfo& info) {
  return start<ScoreJob>(info, to_score_job,
                         [](Napi::Env env, const ScoreJob& job, const Borrowed& a) {
                           return new ScoreWorker(env, job, a);
                         });
}

}  // namespace dvemb::addon
