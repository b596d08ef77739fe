// Stopping a long CPU kernel call early (Ctrl-C). The kernels run their batch through interruptible_parallel_for
// and tick an InterruptCountdown in their loops, which calls check_interrupt() about every kInterruptWork matrix
// entries of work. On the thread that started the call, at most every 100 ms, check_interrupt() asks the
// installed InterruptPoll whether to stop; once it says so, every thread of the call throws the exception the
// poll returned at its next check. Without a poll installed (the plain libtorch build) nothing ever stops. The
// Python extension installs one that runs Python's signal handlers (python_interrupt.cpp).
#pragma once

#include "parallel.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>

namespace helo_fast {

// Called on the thread that started a call: the exception that stops the call, or nullptr to go on.
using InterruptPoll = std::exception_ptr (*)();

// Installs the poll used by calls that start afterwards (nullptr: none).
void set_interrupt_poll(InterruptPoll poll);

// Matrix entries of solver work between two check_interrupt() calls (0.2-1 ms), so that the call (~2 ns, ~25 ns
// on the calling thread: a clock read) costs nothing measurable, e.g. 64 calls in HeLo's GW forward at B=128.
constexpr int64_t kInterruptWork = int64_t(1) << 18;

class InterruptScope;

// What a thread is working for: the call, and whether it is the calling thread (the one that polls).
struct InterruptBinding {
  InterruptScope* scope = nullptr;
  bool polls = false;
};

// One kernel call: its stop flag and the exception every thread of it throws once stopped.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

  // Binds the current thread to the call for the lifetime of the object (a no-op on the calling thread).
  class Member {
   public:
    explicit Member(InterruptScope& scope);
    ~Member();
    Member(const Member&) = delete;
    Member& operator=(const Member&) = delete;

   private:
    InterruptBinding saved_;
  };

 private:
  friend void check_interrupt();
  InterruptPoll poll_;
  std::atomic<bool> stopped_{false};
  std::exception_ptr error_;
  std::chrono::steady_clock::time_point next_poll_;
  InterruptBinding saved_;
};

// Throws the call's stop exception if the call was stopped (polling first on the calling thread when due);
// a no-op outside interruptible_parallel_for.
void check_interrupt();

// helo_fast::parallel_for whose threads share one InterruptScope.
template <typename F>
void interruptible_parallel_for(int64_t begin, int64_t end, int64_t grain_size, const F& f) {
  InterruptScope scope;
  parallel_for(begin, end, grain_size, [&](int64_t b, int64_t e) {
    InterruptScope::Member member(scope);
    f(b, e);
  });
}

// Calls check_interrupt() once per ~kInterruptWork matrix entries in a loop whose every pass (tick) touches
// `entries` of them `passes` times.
class InterruptCountdown {
 public:
  explicit InterruptCountdown(int64_t entries, int64_t passes = 1) {
    const int64_t passes_per_check = kInterruptWork / (entries > 0 ? entries : 1);
    every_ = left_ = passes_per_check <= passes ? 1 : passes_per_check / passes;
  }
  inline void tick() {
    if (__builtin_expect(--left_ == 0, 0)) {
      left_ = every_;
      check_interrupt();
    }
  }

 private:
  int64_t every_, left_;
};

}  // namespace helo_fast
