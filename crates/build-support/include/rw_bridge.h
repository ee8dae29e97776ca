// Shared by rustworthy's C++ bridges to libtorch: every entry point runs its body through
// `guarded`, which turns a C++ exception into a malloc'd message for Rust (freed there with
// `free`) and a non-zero return code.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace rw_bridge {

inline char* dup_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// Keeps the first line of a c10 error (the rest is a C++ backtrace).
inline std::string short_message(const std::exception& e) {
  std::string m = e.what();
  auto cut = m.find("\nException raised from");
  if (cut != std::string::npos) {
    m = m.substr(0, cut);
  }
  return m;
}

template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    if (err != nullptr) *err = dup_message(short_message(e));
  } catch (...) {
    if (err != nullptr) *err = dup_message("unknown C++ exception");
  }
  return 1;
}

}  // namespace rw_bridge
