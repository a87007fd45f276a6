{
  "targets": [
    {
      "target_name": "dvemb",
      "sources": [
        "native/core/checksum.cc",
        "native/core/projection.cc",
        "native/core/propagator.cc",
        "native/core/scoring.cc",
        "native/addon/addon.cc",
        "native/addon/args.cc",
        "native/addon/workers.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "/usr/include/x86_64-linux-gnu/openblas-pthread",
        "/usr/include/openblas"
      ],
      # SWALLOW_UNTHROWABLE: a worker settling its promise while a worker_thread is torn down
      # must not abort the process.
      "defines": [
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NAPI_VERSION=8",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
      ],
      "cflags": ["-O3", "-Wall", "-Wextra", "-ffp-contract=off"],
      "cflags_cc": ["-std=c++17"],
      "libraries": ["-lopenblas", "-ldeflate"]
    }
  ]
}
