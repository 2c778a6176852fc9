// probe_report.h — what the stand-alone probes in host/tools share: a monotonic clock in
// microseconds and one line of percentiles per measured case.
#pragma once

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <vector>

namespace airlock::probe {

inline double nowUs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

inline void report(const char *what, std::vector<double> us) {
    std::sort(us.begin(), us.end());
    const auto at = [&](double q) { return us[static_cast<size_t>(q * static_cast<double>(us.size() - 1))]; };
    std::printf("%-52s p50 %8.2f us  p90 %8.2f us  p99 %8.2f us  max %8.2f us  (n=%zu)\n", what, at(0.5), at(0.9),
                at(0.99), us.back(), us.size());
}

} // namespace airlock::probe
