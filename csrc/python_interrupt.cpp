// The InterruptPoll of the Python extension (installed by module.cpp): Ctrl-C stops a kernel call the way it
// stops Python code. Python runs signal handlers on its main thread only, so only calls started there poll;
// whatever a handler raises (KeyboardInterrupt for SIGINT) reaches the caller unchanged through torch's
// python_error.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>

#include "interrupt.h"

namespace helo_fast {
namespace {

unsigned long main_thread_ident = 0;

std::exception_ptr poll_python_signals() {
  if (PyThread_get_thread_ident() != main_thread_ident) return nullptr;
  const PyGILState_STATE gil = PyGILState_Ensure();
  std::exception_ptr error;
  if (PyErr_CheckSignals() != 0) {
    python_error raised;
    raised.persist();  // moves the handler's exception out of this thread's error indicator
    error = std::make_exception_ptr(std::move(raised));
  }
  PyGILState_Release(gil);
  return error;
}

}  // namespace

// Called with the GIL held (module import).
void install_python_interrupt_poll() {
  main_thread_ident = pybind11::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  set_interrupt_poll(&poll_python_signals);
}

}  // namespace helo_fast
