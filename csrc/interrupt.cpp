// See interrupt.h.
#include "interrupt.h"

namespace helo_fast {
namespace {

// Short enough for a prompt stop; long enough that a poll waiting for the GIL (up to Python's 5 ms switch
// interval when another Python thread runs) costs at most a few percent.
constexpr std::chrono::milliseconds kPollInterval{100};

std::atomic<InterruptPoll> installed_poll{nullptr};
thread_local InterruptBinding current;

}  // namespace

void set_interrupt_poll(InterruptPoll poll) { installed_poll.store(poll); }

InterruptScope::InterruptScope()
    : poll_(installed_poll.load()), next_poll_(std::chrono::steady_clock::now() + kPollInterval), saved_(current) {
  current = {this, poll_ != nullptr};
}

InterruptScope::~InterruptScope() { current = saved_; }

InterruptScope::Member::Member(InterruptScope& scope) : saved_(current) {
  if (current.scope != &scope) current = {&scope, false};
}

InterruptScope::Member::~Member() { current = saved_; }

void check_interrupt() {
  InterruptScope* scope = current.scope;
  if (scope == nullptr) return;
  if (scope->stopped_.load(std::memory_order_acquire)) std::rethrow_exception(scope->error_);
  if (!current.polls) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < scope->next_poll_) return;
  std::exception_ptr error = scope->poll_();
  scope->next_poll_ = std::chrono::steady_clock::now() + kPollInterval;
  if (!error) return;
  scope->error_ = error;
  scope->stopped_.store(true, std::memory_order_release);
  std::rethrow_exception(error);
}

}  // namespace helo_fast
