# binding.gyp — builds the VMM addon (host/build/Release/airlock.node). C++17, -O2,
# C++ exceptions on (node-addon-api throws Napi::Error).
{
  "targets": [
    {
      "target_name": "airlock",
      "sources": [
        "src/addon.cc",
        "src/sandbox.cc",
        "src/vcpu_thread.cc",
        "src/runner.cc",
        "src/runner_napi.cc",
        "src/census.cc",
        "src/cancellation.cc",
        "src/core_budget.cc",
        "src/load_sampler.cc",
        "src/poll_window.cc",
        "src/answer_watcher.cc",
        "src/hostcall_memory.cc",
        "src/host_wait.cc",
        "src/snapshot.cc",
        "src/messages.cc",
        "src/layout.cc",
        "src/guest_memory.cc",
        "src/memory_image.cc",
        "src/template.cc",
        "src/template_napi.cc",
        "src/clone_boot.cc",
        "src/direct_restore.cc",
        "src/vm_factory.cc",
        "src/exit_floor.cc",
        "src/out_loop_vm.cc",
        "src/loop_wait.cc",
        "src/sleep_timers.cc",
        "kvm/kvm.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions", "-O3"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-O3"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags": ["-O2"],
      "ldflags": ["-lrt", "-pthread"]
    }
  ]
}
