// reply_deadline.h — the wall-clock monitor of a sandbox whose guest waits for a host
// call's reply with no runner holding it (host_wait.cc lets the runner go): the
// runners' timers follow only the sandboxes they hold, so the main thread's event
// loop, which runs the host function anyway, keeps the exchange's deadline with a
// libuv timer armed when a host call is dispatched and disarmed when it is answered.
// At the deadline it records WallClock like the runner's timer would (first reason
// wins; Sandbox::cancel queues a sandbox let go in its wait). Loop thread only.
#pragma once

#include <uv.h>

#include <functional>
#include <stdexcept>

#include "timing.h"

namespace airlock {

class ReplyDeadline {
public:
    ReplyDeadline(uv_loop_t *loop, std::function<void()> expired) : handle_(new uv_timer_t), expired_(std::move(expired)) {
        if (uv_timer_init(loop, handle_) != 0) {
            delete handle_;
            throw std::runtime_error("uv_timer_init failed");
        }
        handle_->data = this;
        // Never keeps the loop alive by itself: an operation in flight does (Notifier).
        uv_unref(reinterpret_cast<uv_handle_t *>(handle_));
    }
    ReplyDeadline(const ReplyDeadline &) = delete;
    ReplyDeadline &operator=(const ReplyDeadline &) = delete;
    ~ReplyDeadline() { close(); }

    // CLOCK_MONOTONIC `deadlineNs` (0: the exchange has no wall-clock limit).
    void arm(uint64_t deadlineNs) {
        deadlineNs_ = deadlineNs;
        if (!handle_) return;
        if (deadlineNs == 0) return disarm();
        start();
    }
    void disarm() {
        deadlineNs_ = 0;
        if (handle_) uv_timer_stop(handle_);
    }
    // Idempotent; no callback runs after it.
    void close() {
        if (!handle_) return;
        uv_timer_stop(handle_);
        uv_close(reinterpret_cast<uv_handle_t *>(handle_), [](uv_handle_t *h) { delete reinterpret_cast<uv_timer_t *>(h); });
        handle_ = nullptr;
    }

private:
    void start() {
        const uint64_t now = monotonicNs();
        // libuv counts whole milliseconds from its cached loop time: round up, and
        // check the clock when it fires (onTimer re-arms for what is left).
        const uint64_t ms = deadlineNs_ > now ? (deadlineNs_ - now + 999'999) / 1'000'000 : 0;
        uv_timer_start(handle_, OnTimer, ms, 0);
    }
    static void OnTimer(uv_timer_t *h) { static_cast<ReplyDeadline *>(h->data)->onTimer(); }
    void onTimer() {
        if (deadlineNs_ == 0) return;
        if (monotonicNs() < deadlineNs_) return start();
        deadlineNs_ = 0;
        expired_();
    }

    uv_timer_t *handle_;
    std::function<void()> expired_;
    uint64_t deadlineNs_ = 0;
};

} // namespace airlock
