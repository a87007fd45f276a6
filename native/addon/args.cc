#include "args.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "../core/blas.h"

namespace dvemb::addon {

namespace {

// BLAS sizes are int.
constexpr int64_t kMaxSize = INT32_MAX;
constexpr int64_t kMaxSeed = int64_t{1} << 53;
constexpr int64_t kMaxBlock = UINT32_MAX;  // a Philox counter word
constexpr int kMaxThreads = 1024;

template <typename T>
struct ArrayType;
template <>
struct ArrayType<float> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct ArrayType<double> {
  static constexpr napi_typedarray_type type = napi_float64_array;
  static constexpr const char* name = "Float64Array";
};
template <>
struct ArrayType<int32_t> {
  static constexpr napi_typedarray_type type = napi_int32_array;
  static constexpr const char* name = "Int32Array";
};

const char* typed_array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "typed array";
  }
}

std::string with_article(const char* noun) {
  const bool vowel = std::string("AEIOUaeiou").find(noun[0]) != std::string::npos;
  return std::string(vowel ? "an " : "a ") + noun;
}

// What a value is, for "got ..." in messages.
std::string describe(Napi::Value v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "true" : "false";
  if (v.IsNumber()) return v.ToString().Utf8Value();
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return "'" + s + "'";
  }
  if (v.IsTypedArray()) {
    return with_article(typed_array_name(v.As<Napi::TypedArray>().TypedArrayType()));
  }
  if (v.IsArray()) return "an Array";
  if (v.IsArrayBuffer()) return "an ArrayBuffer";
  if (v.IsFunction()) return "a function";
  if (v.IsObject()) return "an object";
  if (v.IsBigInt()) return "a bigint";
  return "a symbol";
}

// Sizes multiplied without overflow: past INT64_MAX no typed array can match anyway.
int64_t product(std::initializer_list<int64_t> factors) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(p, f, &p)) return INT64_MAX;
  }
  return p;
}

ArgError type_error(std::string message) { return {ArgError::Kind::Type, std::move(message)}; }
ArgError range_error(std::string message) { return {ArgError::Kind::Range, std::move(message)}; }

std::string range_text(int64_t min, int64_t max) {
  if (max == kMaxSeed) return "[" + std::to_string(min) + ", 2^53)";
  return "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
}

ArgError to_integer(Napi::Value v, const std::string& name, int64_t min, int64_t max,
                    int64_t* out) {
  const std::string expected = "an integer in " + range_text(min, max);
  if (!v.IsNumber()) return type_error(name + " must be " + expected + ", got " + describe(v));
  const double x = v.As<Napi::Number>().DoubleValue();
  // The bounds are exact doubles (< 2^53 or 2^53 itself), so these comparisons are exact.
  const bool whole = std::isfinite(x) && x == std::trunc(x);
  const bool in_range = whole && x >= static_cast<double>(min) &&
                        (max == kMaxSeed ? x < static_cast<double>(max)
                                         : x <= static_cast<double>(max));
  if (!in_range) return range_error(name + " must be " + expected + ", got " + describe(v));
  *out = static_cast<int64_t>(x);
  return {};
}

// Reads the fields of one argument object; the first failure is kept and later reads are
// no-ops, so a conversion reads straight through and checks ok() once.
class Reader {
 public:
  Reader(Napi::Value object, const char* fn, const char* object_name = "args")
      : env_(object.Env()), fn_(fn), object_name_(object_name) {
    if (!object.IsObject()) {
      fail(type_error(std::string(fn) + ": " + object_name + " must be an object, got " +
                      describe(object)));
    } else {
      object_ = object.As<Napi::Object>();
    }
  }

  bool ok() const { return !error_.failed(); }
  const ArgError& error() const { return error_; }
  // "propagate: args.rows", as messages start.
  std::string name(const char* field) const { return fn_ + ": " + local(field); }
  // "args.rows", as messages refer to a second field.
  std::string local(const char* field) const { return object_name_ + "." + field; }

  int64_t integer(const char* field, int64_t min, int64_t max) {
    if (!ok()) return 0;
    Napi::Value v = get(field);
    if (!ok()) return 0;
    int64_t out = 0;
    fail(to_integer(v, name(field), min, max, &out));
    return ok() ? out : 0;
  }

  bool boolean(const char* field) {
    if (!ok()) return false;
    Napi::Value v = get(field);
    if (!ok()) return false;
    if (!v.IsBoolean()) {
      fail(type_error(name(field) + " must be a boolean, got " + describe(v)));
      return false;
    }
    return v.As<Napi::Boolean>().Value();
  }

  // The position of the field's string value among the options.
  int choice(const char* field, std::initializer_list<const char*> options) {
    if (!ok()) return 0;
    Napi::Value v = get(field);
    if (!ok()) return 0;
    std::string list;
    for (const char* o : options) list += (list.empty() ? "'" : " or '") + std::string(o) + "'";
    if (!v.IsString()) {
      fail(type_error(name(field) + " must be " + list + ", got " + describe(v)));
      return 0;
    }
    const std::string s = v.As<Napi::String>().Utf8Value();
    int i = 0;
    for (const char* o : options) {
      if (s == o) return i;
      ++i;
    }
    fail(range_error(name(field) + " must be " + list + ", got " + describe(v)));
    return 0;
  }

  // The data of a typed array of element type T (a view's byte offset included), kept alive
  // through `arrays`. When optional, null or undefined give nullptr and length 0.
  template <typename T>
  T* array(const char* field, int64_t* length, Borrowed* arrays, bool optional = false) {
    *length = 0;
    if (!ok()) return nullptr;
    Napi::Value v = get(field);
    if (!ok()) return nullptr;
    if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != ArrayType<T>::type) {
      fail(type_error(name(field) + " must be " + with_article(ArrayType<T>::name) +
                      (optional ? " or null" : "") + ", got " + describe(v)));
      return nullptr;
    }
    auto typed = v.As<Napi::TypedArrayOf<T>>();
    arrays->push_back(typed);
    *length = static_cast<int64_t>(typed.ElementLength());
    return typed.Data();
  }

  // A null or undefined field (one that must be absent given the others).
  void absent(const char* field, const char* because) {
    if (!ok()) return;
    Napi::Value v = get(field);
    if (ok() && !v.IsNull() && !v.IsUndefined()) {
      fail(type_error(name(field) + " must be null " + because + ", got " + describe(v)));
    }
  }

  // A cross-field check: RangeError "<field> must be <expected>, got <got>" unless holds.
  void require(bool holds, const char* field, const std::string& expected,
               const std::string& got) {
    if (ok() && !holds) fail(range_error(name(field) + " must be " + expected + ", got " + got));
  }

  void require_length(const char* field, int64_t length, int64_t expected,
                      const char* formula) {
    require(length == expected, field,
            std::string("of length ") + formula + " = " + std::to_string(expected),
            "length " + std::to_string(length));
  }

  void require_min_length(const char* field, int64_t length, int64_t expected,
                          const char* formula) {
    require(length >= expected, field,
            std::string("of length at least ") + formula + " = " + std::to_string(expected),
            "length " + std::to_string(length));
  }

  // Outputs written while inputs are still read must not share memory with them.
  template <typename A, typename B>
  void require_disjoint(const char* a_field, const A* a, int64_t a_length, const char* b_field,
                        const B* b, int64_t b_length) {
    if (!ok() || !a || !b || a_length == 0 || b_length == 0) return;
    const auto a0 = reinterpret_cast<uintptr_t>(a), a1 = a0 + a_length * sizeof(A);
    const auto b0 = reinterpret_cast<uintptr_t>(b), b1 = b0 + b_length * sizeof(B);
    if (a0 < b1 && b0 < a1) {
      fail(range_error(name(a_field) + " must not share memory with " + local(b_field)));
    }
  }

 private:
  Napi::Value get(const char* field) {
    Napi::Value v = object_.Get(field);
    if (env_.IsExceptionPending()) fail({ArgError::Kind::Pending, ""});
    return v;
  }

  void fail(ArgError e) {
    if (ok() && e.failed()) error_ = std::move(e);
  }

  Napi::Env env_;
  std::string fn_, object_name_;
  Napi::Object object_;
  ArgError error_;
};

Distribution read_distribution(Reader& r) {
  return r.choice("distribution", {"gaussian", "rademacher"}) == 0 ? Distribution::Gaussian
                                                                   : Distribution::Rademacher;
}

// A (rows × ld) output written at columns [offset, offset + width) of each row.
void check_strided_out(Reader& r, int64_t n, int64_t width, int64_t ld_out, int64_t offset,
                       int64_t out_length, const char* width_formula) {
  r.require(offset + width <= ld_out, "ldOut",
            std::string("at least offset + ") + width_formula + " = " +
                std::to_string(offset + width),
            std::to_string(ld_out));
  if (n > 0) {
    r.require_min_length("out", out_length, product({n - 1, ld_out}) + offset + width,
                         (std::string("(n - 1) * ldOut + offset + ") + width_formula).c_str());
  }
}

}  // namespace

Napi::Value ArgError::value(Napi::Env env) const {
  switch (kind) {
    case Kind::Pending: return env.GetAndClearPendingException().Value();
    case Kind::Type: return Napi::TypeError::New(env, message).Value();
    case Kind::Range: return Napi::RangeError::New(env, message).Value();
    case Kind::None: break;
  }
  return env.Undefined();
}

ArgError to_threads(Napi::Value threads, int* out) {
  int64_t t = 0;
  ArgError e = to_integer(threads, "setThreads: threads", 1, kMaxThreads, &t);
  *out = static_cast<int>(t);
  return e;
}

ArgError to_matrix_request(const Napi::CallbackInfo& info, ProjectionKey* key, int64_t* rows,
                           int64_t* cols) {
  Reader r(info[0], "projectionMatrix", "key");
  key->seed = static_cast<uint64_t>(r.integer("seed", 0, kMaxSeed));
  key->block = static_cast<uint32_t>(r.integer("block", 0, kMaxBlock));
  key->factor = static_cast<uint32_t>(r.integer("factor", kFactorDense, kFactorOut));
  key->distribution = read_distribution(r);
  if (!r.ok()) return r.error();
  if (ArgError e = to_integer(info[1], "projectionMatrix: rows", 1, kMaxSize, rows); e.failed()) {
    return e;
  }
  if (ArgError e = to_integer(info[2], "projectionMatrix: cols", 1, kMaxSize, cols); e.failed()) {
    return e;
  }
  // The result is one Float32Array.
  if (*rows * *cols > INT32_MAX) {
    return range_error("projectionMatrix: rows * cols must be at most 2147483647, got " +
                       std::to_string(*rows * *cols));
  }
  return {};
}

ArgError to_kronecker_job(Napi::Value args, KroneckerJob* job, Borrowed* arrays) {
  Reader r(args, "projectKronecker");
  job->seed = static_cast<uint64_t>(r.integer("seed", 0, kMaxSeed));
  job->block = static_cast<uint32_t>(r.integer("block", 0, kMaxBlock));
  job->distribution = read_distribution(r);
  job->form = r.choice("form", {"factors", "gradient"}) == 0 ? KroneckerJob::Form::Factors
                                                             : KroneckerJob::Form::Gradient;
  job->n = r.integer("n", 0, kMaxSize);
  job->tokens = r.integer("tokens", 1, kMaxSize);
  job->d_in = r.integer("dIn", 1, kMaxSize - 1);
  job->d_out = r.integer("dOut", 1, kMaxSize);
  job->bias = r.boolean("bias");
  job->k_in = r.integer("kIn", 1, kMaxSize);
  job->k_out = r.integer("kOut", 1, kMaxSize);
  int64_t inputs_length = 0, grads_length = 0, out_length = 0;
  job->inputs = r.array<float>("inputs", &inputs_length, arrays);
  const bool factors = job->form == KroneckerJob::Form::Factors;
  // In the gradient form outputGrads is unused: a Float32Array (any length) or null.
  job->output_grads = r.array<float>("outputGrads", &grads_length, arrays, !factors);
  job->out = r.array<float>("out", &out_length, arrays);
  job->ld_out = r.integer("ldOut", 1, kMaxSize);
  job->offset = r.integer("offset", 0, kMaxSize);
  if (!r.ok()) return r.error();

  const int64_t n = job->n, tokens = job->tokens;
  if (factors) {
    r.require_length("inputs", inputs_length, product({n, tokens, job->d_in}), "n * tokens * dIn");
    r.require_length("outputGrads", grads_length, product({n, tokens, job->d_out}),
                     "n * tokens * dOut");
  } else {
    r.require_length("inputs", inputs_length, product({n, job->d_out, job->d_in + job->bias}),
                     "n * dOut * (dIn + bias)");
    job->output_grads = nullptr;
    grads_length = 0;
  }
  check_strided_out(r, n, product({job->k_in, job->k_out}), job->ld_out, job->offset,
                    out_length, "kIn * kOut");
  r.require_disjoint("out", job->out, out_length, "inputs", job->inputs, inputs_length);
  r.require_disjoint("out", job->out, out_length, "outputGrads", job->output_grads,
                     grads_length);
  job->threads = blas_threads();
  return r.error();
}

ArgError to_dense_job(Napi::Value args, DenseJob* job, Borrowed* arrays) {
  Reader r(args, "projectDense");
  job->seed = static_cast<uint64_t>(r.integer("seed", 0, kMaxSeed));
  job->block = static_cast<uint32_t>(r.integer("block", 0, kMaxBlock));
  job->distribution = read_distribution(r);
  job->n = r.integer("n", 0, kMaxSize);
  job->d = r.integer("d", 1, kMaxSize);
  job->k = r.integer("k", 1, kMaxSize);
  int64_t grads_length = 0, out_length = 0;
  job->grads = r.array<float>("grads", &grads_length, arrays);
  job->out = r.array<float>("out", &out_length, arrays);
  job->ld_out = r.integer("ldOut", 1, kMaxSize);
  job->offset = r.integer("offset", 0, kMaxSize);
  if (!r.ok()) return r.error();

  r.require_length("grads", grads_length, product({job->n, job->d}), "n * d");
  check_strided_out(r, job->n, job->k, job->ld_out, job->offset, out_length, "k");
  r.require_disjoint("out", job->out, out_length, "grads", job->grads, grads_length);
  job->threads = blas_threads();
  return r.error();
}

ArgError to_propagate_job(Napi::Value args, PropagateJob* job, Borrowed* arrays) {
  Reader r(args, "propagate");
  job->fp64 = r.choice("precision", {"fp32", "fp64"}) == 1;
  job->dim = r.integer("dim", 1, kMaxSize);
  int64_t blocks_length = 0, p_length = 0, rows_length = 0, step_rows_length = 0,
          weights_length = 0, curv_length = 0, step_curv_length = 0, curv_weights_length = 0,
          lr_length = 0, decay_length = 0, emb_length = 0;
  job->blocks = r.array<int32_t>("blocks", &blocks_length, arrays);
  if (job->fp64) {
    job->propagators64 = r.array<double>("propagators", &p_length, arrays);
  } else {
    job->propagators32 = r.array<float>("propagators", &p_length, arrays);
  }
  job->steps = r.integer("steps", 0, kMaxSize - 1);
  job->rows = r.array<float>("rows", &rows_length, arrays);
  job->step_rows = r.array<int32_t>("stepRows", &step_rows_length, arrays);
  job->weights = r.array<double>("weights", &weights_length, arrays);
  job->curvature = r.array<float>("curvature", &curv_length, arrays, true);
  if (job->curvature) {
    job->step_curvature = r.array<int32_t>("stepCurvature", &step_curv_length, arrays);
    job->curvature_weights = r.array<double>("curvatureWeights", &curv_weights_length, arrays);
  } else {
    r.absent("stepCurvature", "when curvature is null");
    r.absent("curvatureWeights", "when curvature is null");
  }
  job->lr = r.array<double>("lr", &lr_length, arrays);
  job->decay = r.array<double>("decay", &decay_length, arrays);
  job->embeddings = r.array<float>("embeddings", &emb_length, arrays);
  if (!r.ok()) return r.error();

  // Blocks: k ≥ 1 columns each, inside [0, dim), no two sharing a column.
  const int64_t dim = job->dim;
  r.require(blocks_length >= 2 && blocks_length % 2 == 0, "blocks",
            "[off, k] pairs (an even length of at least 2)",
            "length " + std::to_string(blocks_length));
  job->block_count = blocks_length / 2;
  std::vector<std::pair<int64_t, int64_t>> spans;
  int64_t p_expected = 0;
  for (int64_t b = 0; b < job->block_count && r.ok(); ++b) {
    const int64_t off = job->blocks[2 * b], k = job->blocks[2 * b + 1];
    r.require(off >= 0 && k >= 1 && off + k <= dim, "blocks",
              "pairs [off, k] with k >= 1 and 0 <= off, off + k <= dim = " + std::to_string(dim),
              "[" + std::to_string(off) + ", " + std::to_string(k) + "] for block " +
                  std::to_string(b));
    spans.emplace_back(off, k);
    p_expected += k * k;
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size() && r.ok(); ++i) {
    const auto& [a_off, a_k] = spans[i - 1];
    const auto& [b_off, b_k] = spans[i];
    r.require(b_off >= a_off + a_k, "blocks", "disjoint column ranges",
              "[" + std::to_string(a_off) + ", " + std::to_string(a_off + a_k) + ") and [" +
                  std::to_string(b_off) + ", " + std::to_string(b_off + b_k) + ")");
  }
  r.require_length("propagators", p_length, p_expected, "the sum of k_b^2");

  // Rows and their step offsets.
  const int64_t steps = job->steps;
  r.require(rows_length % dim == 0, "rows", "a whole number of rows of dim = " +
            std::to_string(dim), "length " + std::to_string(rows_length));
  const int64_t n_rows = rows_length / dim;
  auto check_offsets = [&](const char* field, const int32_t* offsets, int64_t length,
                           int64_t available) {
    r.require_length(field, length, steps + 1, "steps + 1");
    for (int64_t s = 0; s <= steps && r.ok(); ++s) {
      const int64_t lo = s == 0 ? 0 : offsets[s - 1];
      r.require(offsets[s] >= lo && offsets[s] <= available, field,
                "non-decreasing offsets within [0, " + std::to_string(available) + "]",
                std::to_string(offsets[s]) + " at index " + std::to_string(s));
    }
  };
  check_offsets("stepRows", job->step_rows, step_rows_length, n_rows);
  r.require_length("weights", weights_length, n_rows, "rows.length / dim");
  if (job->curvature) {
    r.require(curv_length % dim == 0, "curvature", "a whole number of rows of dim = " +
              std::to_string(dim), "length " + std::to_string(curv_length));
    const int64_t n_curv = curv_length / dim;
    check_offsets("stepCurvature", job->step_curvature, step_curv_length, n_curv);
    r.require_length("curvatureWeights", curv_weights_length, n_curv, "curvature.length / dim");
  }
  r.require_length("lr", lr_length, steps, "steps");
  r.require_length("decay", decay_length, steps, "steps");
  r.require_length("embeddings", emb_length, rows_length, "rows.length");

  r.require_disjoint("embeddings", job->embeddings, emb_length, "rows", job->rows, rows_length);
  r.require_disjoint("embeddings", job->embeddings, emb_length, "curvature", job->curvature,
                     curv_length);
  if (job->fp64) {
    r.require_disjoint("embeddings", job->embeddings, emb_length, "propagators",
                       job->propagators64, p_length);
  } else {
    r.require_disjoint("embeddings", job->embeddings, emb_length, "propagators",
                       job->propagators32, p_length);
  }
  return r.error();
}

ArgError to_score_job(Napi::Value args, ScoreJob* job, Borrowed* arrays) {
  Reader r(args, "score");
  job->n = r.integer("n", 0, kMaxSize);
  job->m = r.integer("m", 0, kMaxSize);
  job->dim = r.integer("dim", 1, kMaxSize);
  int64_t emb_length = 0, tests_length = 0, out_length = 0;
  job->embeddings = r.array<float>("embeddings", &emb_length, arrays);
  job->tests = r.array<float>("tests", &tests_length, arrays);
  job->out = r.array<float>("out", &out_length, arrays);
  if (!r.ok()) return r.error();

  r.require_length("embeddings", emb_length, product({job->n, job->dim}), "n * dim");
  r.require_length("tests", tests_length, product({job->m, job->dim}), "m * dim");
  r.require_length("out", out_length, product({job->n, job->m}), "n * m");
  r.require_disjoint("out", job->out, out_length, "embeddings", job->embeddings, emb_length);
  r.require_disjoint("out", job->out, out_length, "tests", job->tests, tests_length);
  return r.error();
}

}  // namespace dvemb::addon
