// edgepress-run: runs a compiled edgepress artifact with the TVM runtime alone (no Python).
//
//   edgepress-run LIBRARY OUT_DIR INPUT.npy... [--repeat N]
//
// Inputs are .npy files given in the model's input order; each output is written to
// OUT_DIR/output_<i>.npy in the model's output order. With --repeat N the entry function is
// timed N more times after the first run and the per-run milliseconds are printed, one per line,
// after "times_ms:". It is built for each target triple (for arm64 with the Debian cross g++)
// and is what runs the artifact under qemu and on a device.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

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

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (n + 63) / 64 * 64 + 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct DTypeCode {
  const char* descr;  // numpy descr without the byte-order character
  DLDataType dtype;
};

const DTypeCode kDTypes[] = {
    {"f4", {kDLFloat, 32, 1}}, {"f8", {kDLFloat, 64, 1}}, {"f2", {kDLFloat, 16, 1}},
    {"i1", {kDLInt, 8, 1}},    {"i2", {kDLInt, 16, 1}},   {"i4", {kDLInt, 32, 1}},
    {"i8", {kDLInt, 64, 1}},   {"u1", {kDLUInt, 8, 1}},   {"u2", {kDLUInt, 16, 1}},
    {"u4", {kDLUInt, 32, 1}},  {"u8", {kDLUInt, 64, 1}},  {"b1", {kDLBool, 8, 1}},
};

DLDataType DTypeFromDescr(const std::string& descr, const std::string& path) {
  std::string code = descr.substr(1);
  if (descr[0] == '>') throw std::runtime_error(path + ": big-endian arrays are not supported");
  for (const auto& d : kDTypes) {
    if (code == d.descr) return d.dtype;
  }
  throw std::runtime_error(path + ": unsupported dtype '" + descr + "'");
}

std::string DescrFromDType(DLDataType t) {
  for (const auto& d : kDTypes) {
    if (d.dtype.code == t.code && d.dtype.bits == t.bits) {
      return std::string(t.bits == 8 ? "|" : "<") + d.descr;
    }
  }
  throw std::runtime_error("output has a dtype with no numpy equivalent");
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

ffi::Tensor ReadNpy(const std::string& path) {
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
  DLDataType dtype = DTypeFromDescr(HeaderValue(header, "descr"), path);
  std::vector<int64_t> shape;
  std::stringstream dims(HeaderValue(header, "shape"));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(dim));
  }
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dtype, DLDevice{kDLCPU, 0});
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  in.read(static_cast<char*>(t.data_ptr()), nbytes);
  if (static_cast<size_t>(in.gcount()) != nbytes) throw std::runtime_error(path + ": truncated");
  return t;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) throw std::runtime_error("output is not on the CPU");
  std::string shape = "(";
  for (int i = 0; i < dl->ndim; ++i) shape += std::to_string(dl->shape[i]) + (dl->ndim == 1 ? "," : (i + 1 < dl->ndim ? ", " : ""));
  shape += ")";
  std::string header = "{'descr': '" + DescrFromDType(dl->dtype) +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), header.size());
  out.write(static_cast<const char*>(dl->data) + dl->byte_offset, ffi::GetDataSize(*dl));
  if (!out) throw std::runtime_error(path + ": write failed");
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, out);
  } else {
    throw std::runtime_error("the model returned a value that is neither a tensor nor a tuple");
  }
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
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // (device type, device id, allocator: 2 = pooled) for the CPU, which is also the host.
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::vector<ffi::Any> args;
  for (const auto& path : inputs) args.emplace_back(ReadNpy(path));
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any result;
  main_fn.CallPacked(views.data(), static_cast<int>(views.size()), &result);
  std::vector<ffi::Tensor> outputs;
  Flatten(result, &outputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    WriteNpy(std::string(argv[2]) + "/output_" + std::to_string(i) + ".npy", outputs[i]);
  }
  if (repeat > 0) {
    std::cout << "times_ms:" << std::endl;
    for (int r = 0; r < repeat; ++r) {
      auto start = std::chrono::steady_clock::now();
      main_fn.CallPacked(views.data(), static_cast<int>(views.size()), &result);
      std::chrono::duration<double, std::milli> ms = std::chrono::steady_clock::now() - start;
      std::cout << ms.count() << std::endl;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: edgepress-run LIBRARY OUT_DIR INPUT.npy... [--repeat N]" << std::endl;
    return 2;
  }
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "edgepress-run: " << e.what() << std::endl;
    return 1;
  }
}
