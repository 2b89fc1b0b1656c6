// edgepress-run: runs an edgepress artifact folder through its C API (edgepress.h), with the
// TVM runtime alone (no Python).
//
//   edgepress-run FOLDER OUT_DIR INPUT.npy... [--repeat N]
//
// Inputs are .npy files given in the model's input order; each output is written to
// OUT_DIR/output_<i>.npy in the model's output order. It prints "init_ms: X" (loading the
// folder onto its device) and "first_run_ms: X"; with --repeat N the model is then timed N
// more times and the per-run milliseconds are printed, one per line, after "times_ms:"; last
// "peak_rss_kib: N", the process's peak resident memory. It is built for each target (for
// arm64 with the Debian cross g++) and is what runs the artifact under qemu and on a device.
#include "edgepress.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct DTypeCode {
  const char* descr;  // numpy descr without the byte-order character
  const char* name;   // edgepress.h's dtype name
};

const DTypeCode kDTypes[] = {
    {"f4", "float32"}, {"f8", "float64"}, {"f2", "float16"}, {"i1", "int8"},
    {"i2", "int16"},   {"i4", "int32"},   {"i8", "int64"},   {"u1", "uint8"},
    {"u2", "uint16"},  {"u4", "uint32"},  {"u8", "uint64"},  {"b1", "bool"},
};

std::string NameFromDescr(const std::string& descr, const std::string& path) {
  if (descr[0] == '>') throw std::runtime_error(path + ": big-endian arrays are not supported");
  for (const auto& d : kDTypes) {
    if (descr.substr(1) == d.descr) return d.name;
  }
  throw std::runtime_error(path + ": unsupported dtype '" + descr + "'");
}

std::string DescrFromName(const std::string& name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return std::string(name == "int8" || name == "uint8" || name == "bool" ? "|" : "<") + d.descr;
  }
  throw std::runtime_error("output has dtype " + name + ", which has no numpy equivalent");
}

std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw std::runtime_error("npy header lacks '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  if (header[start] == '\'') return header.substr(start + 1, header.find('\'', start + 1) - start - 1);
  return header.substr(start, header.find_first_of(",}", start) - start);
}

struct Array {
  std::string dtype;  // edgepress.h's name
  std::vector<int64_t> shape;
  std::vector<char> bytes;
};

Array ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(path + ": not a .npy file");
  }
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t n;
    in.read(reinterpret_cast<char*>(&n), 2);
    header_len = n;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(header.data(), header_len);
  if (HeaderValue(header, "fortran_order") != "False") {
    throw std::runtime_error(path + ": Fortran-ordered arrays are not supported");
  }
  Array array;
  array.dtype = NameFromDescr(HeaderValue(header, "descr"), path);
  std::stringstream dims(HeaderValue(header, "shape"));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') != std::string::npos) array.shape.push_back(std::stoll(dim));
  }
  std::streampos data_start = in.tellg();
  in.seekg(0, std::ios::end);
  array.bytes.resize(static_cast<size_t>(in.tellg() - data_start));
  in.seekg(data_start);
  in.read(array.bytes.data(), static_cast<std::streamsize>(array.bytes.size()));
  if (!in) throw std::runtime_error(path + ": truncated");
  return array;
}

void WriteNpy(const std::string& path, const ep_tensor_info& info, const std::vector<char>& data) {
  std::string shape = "(";
  for (int i = 0; i < info.ndim; ++i) {
    shape += std::to_string(info.shape[i]) + (info.ndim == 1 ? "," : (i + 1 < info.ndim ? ", " : ""));
  }
  shape += ")";
  std::string header = "{'descr': '" + DescrFromName(info.dtype) +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error(path + ": write failed");
}

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// Throws the model's error when `status` says the call failed.
void Check(int status, ep_model* model) {
  if (status != EP_OK) throw std::runtime_error(ep_error(model) ? ep_error(model) : "failed");
}

int Run(int argc, char** argv) {
  std::vector<std::string> inputs;
  int repeat = 0;
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else {
      inputs.push_back(argv[i]);
    }
  }
  auto start = std::chrono::steady_clock::now();
  ep_model* model = nullptr;
  int status = ep_load(argv[1], &model);
  struct Free {
    ep_model* m;
    ~Free() { ep_free(m); }
  } owner{model};
  Check(status, model);
  std::cout << "init_ms: " << MsSince(start) << std::endl;
  if (static_cast<int>(inputs.size()) != ep_num_inputs(model)) {
    throw std::runtime_error("the model takes " + std::to_string(ep_num_inputs(model)) +
                             " inputs; got " + std::to_string(inputs.size()) + " .npy files");
  }
  for (int i = 0; i < ep_num_inputs(model); ++i) {
    ep_tensor_info info;
    Check(ep_input_info(model, i, &info), model);
    Array array = ReadNpy(inputs[i]);
    if (array.dtype != info.dtype) {
      throw std::runtime_error(inputs[i] + ": " + array.dtype + ", but input '" + info.name +
                               "' is " + info.dtype);
    }
    Check(ep_set_input(model, info.name, array.bytes.data(), array.bytes.size()), model);
  }
  start = std::chrono::steady_clock::now();
  Check(ep_run(model), model);
  std::cout << "first_run_ms: " << MsSince(start) << std::endl;
  for (int i = 0; i < ep_num_outputs(model); ++i) {
    ep_tensor_info info;
    Check(ep_output_info(model, i, &info), model);
    std::vector<char> data(info.nbytes);
    Check(ep_get_output(model, info.name, data.data(), data.size()), model);
    WriteNpy(std::string(argv[2]) + "/output_" + std::to_string(i) + ".npy", info, data);
  }
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    start = std::chrono::steady_clock::now();
    Check(ep_run(model), model);
    times.push_back(MsSince(start));
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::cout << "peak_rss_kib: " << usage.ru_maxrss << std::endl;
  if (repeat > 0) {
    std::cout << "times_ms:" << std::endl;
    for (double ms : times) std::cout << ms << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: edgepress-run FOLDER OUT_DIR INPUT.npy... [--repeat N]" << std::endl;
    return 2;
  }
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "edgepress-run: " << e.what() << std::endl;
    return 1;
  }
}
