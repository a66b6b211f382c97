// A minimal fork-join helper: no pool, no global state (threads live for one call).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace topv {

// Runs fn(task, worker) for task in [0, n_tasks) on n_workers threads (the caller
// is worker 0). Tasks are handed out dynamically; results must not depend on
// which worker ran a task. The first exception thrown by any task is rethrown.
template <typename Fn>
void parallel_for(int64_t n_tasks, int n_workers, Fn && fn) {
    n_workers = (int) std::max<int64_t>(1, std::min<int64_t>(n_workers, n_tasks));
    std::atomic<int64_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&](int worker) {
        try {
            for (int64_t t = next++; t < n_tasks; t = next++) {
                fn(t, worker);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next = n_tasks;
        }
    };
    std::vector<std::thread> threads;
    threads.reserve((size_t) n_workers - 1);
    for (int w = 1; w < n_workers; ++w) {
        try {
            threads.emplace_back(work, w);
        } catch (...) {
            break; // no more threads to be had: the running ones take all tasks
        }
    }
    work(0);
    for (auto & t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

} // namespace topv
