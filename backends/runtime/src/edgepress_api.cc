// libedgepress: the C API of edgepress.h over TVM's runtime (Relax VM) and its FFI.
//
// An artifact folder's manifest.json names the inputs and outputs and the target; model.so is
// the VM executable. Inputs are allocated on the artifact's device (CPU, or GPU 0 for cuda) and
// copied there; outputs are copied back on request. Every exception stops at this boundary
// and becomes the model's error string.
#include "edgepress.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <exception>
#include <fstream>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // the VM's allocator kind for each device

struct TensorDesc {
  std::string name;
  std::string dtype;
  DLDataType dl_dtype;
  std::vector<int64_t> shape;
  size_t nbytes = 0;
};

DLDataType ParseDType(const std::string& name) {
  struct Prefix {
    const char* text;
    uint8_t code;
  };
  if (name == "bool") return DLDataType{kDLBool, 8, 1};
  const Prefix prefixes[] = {{"float", kDLFloat}, {"uint", kDLUInt}, {"int", kDLInt}};
  for (const auto& p : prefixes) {
    std::string text(p.text);
    if (name.rfind(text, 0) == 0 && name.size() > text.size()) {
      int bits = std::stoi(name.substr(text.size()));
      return DLDataType{p.code, static_cast<uint8_t>(bits), 1};
    }
  }
  throw std::runtime_error("unsupported dtype '" + name + "' in manifest.json");
}

// 0 while a dim is unknown (-1)
size_t ByteSize(const std::vector<int64_t>& shape, DLDataType dtype) {
  size_t n = (dtype.bits * dtype.lanes + 7) / 8;
  for (int64_t d : shape) n *= d < 0 ? 0 : static_cast<size_t>(d);
  return n;
}

ffi::Any Field(const ffi::json::Object& object, const char* key, const std::string& where) {
  auto it = object.find(ffi::String(key));
  if (it == object.end()) throw std::runtime_error(where + " has no \"" + key + "\"");
  return (*it).second;
}

std::vector<TensorDesc> ParseTensors(const ffi::json::Object& manifest, const char* key) {
  std::vector<TensorDesc> out;
  for (const ffi::Any& item : Field(manifest, key, "manifest.json").cast<ffi::json::Array>()) {
    auto entry = item.cast<ffi::json::Object>();
    TensorDesc d;
    d.name = std::string(Field(entry, "name", key).cast<ffi::String>());
    d.dtype = std::string(Field(entry, "dtype", key).cast<ffi::String>());
    d.dl_dtype = ParseDType(d.dtype);
    for (const ffi::Any& dim : Field(entry, "shape", key).cast<ffi::json::Array>()) {
      // a symbolic dim (an output's, known after a run) is -1 until then
      d.shape.push_back(dim.as<int64_t>().value_or(-1));
    }
    d.nbytes = ByteSize(d.shape, d.dl_dtype);
    out.push_back(std::move(d));
  }
  return out;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

ffi::Function Global(const char* name) {
  auto f = ffi::Function::GetGlobal(name);
  if (!f.has_value()) throw std::runtime_error(std::string("the TVM runtime lacks ") + name);
  return *f;
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

}  // namespace

struct ep_model {
  std::string folder;
  std::string error;
  bool failed = false;
  DLDevice device{kDLCPU, 0};
  std::vector<TensorDesc> inputs;
  std::vector<TensorDesc> outputs;
  std::vector<std::optional<ffi::Tensor>> values;  // inputs on the device
  std::vector<ffi::Tensor> results;                // outputs of the last run
  std::optional<ffi::Module> library;
  std::optional<ffi::Module> vm;
  std::optional<ffi::Function> main;

  int Index(const std::vector<TensorDesc>& list, const char* name, const char* kind) const {
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].name == name) return static_cast<int>(i);
    }
    std::string names;
    for (const auto& d : list) names += (names.empty() ? "" : ", ") + d.name;
    throw std::runtime_error(std::string("no ") + kind + " named '" + name + "' (the model's: " +
                             names + ")");
  }
};

namespace {

// Runs `body` with the model's error cleared; an exception becomes the error and EP_ERROR.
template <typename Body>
int Guard(ep_model* model, Body body) {
  if (model == nullptr) return EP_ERROR;
  model->failed = false;
  model->error.clear();
  try {
    body();
    return EP_OK;
  } catch (const std::exception& err) {
    model->error = err.what();
  } catch (...) {
    model->error = "unknown error";
  }
  if (model->error.empty()) model->error = "unknown error";
  model->failed = true;
  return EP_ERROR;
}

void Load(ep_model* m, const char* folder) {
  m->folder = folder == nullptr ? "" : folder;
  std::string manifest_path = m->folder + "/manifest.json";
  ffi::String parse_error;
  ffi::json::Value parsed = ffi::json::Parse(ffi::String(ReadText(manifest_path)), &parse_error);
  if (!parse_error.empty()) {
    throw std::runtime_error(manifest_path + ": " + std::string(parse_error));
  }
  auto manifest = parsed.cast<ffi::json::Object>();
  m->inputs = ParseTensors(manifest, "inputs");
  for (const auto& d : m->inputs) {
    for (int64_t dim : d.shape) {
      if (dim < 0) throw std::runtime_error(manifest_path + ": input '" + d.name + "' has a symbolic dim");
    }
  }
  m->outputs = ParseTensors(manifest, "outputs");
  auto target = Field(manifest, "target", manifest_path).cast<ffi::json::Object>();
  std::string target_name(Field(target, "name", "target").cast<ffi::String>());
  if (target_name == "cuda") m->device = DLDevice{kDLCUDA, 0};
  m->values.assign(m->inputs.size(), std::nullopt);

  m->library = ffi::Module::LoadFromFile(m->folder + "/model.so");
  m->vm = (*m->library)->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  auto init = (*m->vm)->GetFunction("vm_initialization").value();
  if (m->device.device_type == kDLCPU) {
    init(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  } else {  // the device, then the host for shape computations
    init(static_cast<int>(m->device.device_type), m->device.device_id, kPooledAllocator,
         static_cast<int>(kDLCPU), 0, kPooledAllocator);
  }
  m->main = (*m->vm)->GetFunction("main").value();
}

void Describe(const TensorDesc& d, ep_tensor_info* info) {
  if (info == nullptr) throw std::runtime_error("info is NULL");
  info->name = d.name.c_str();
  info->dtype = d.dtype.c_str();
  info->ndim = static_cast<int>(d.shape.size());
  info->shape = d.shape.data();
  info->nbytes = d.nbytes;
}

void CheckIndex(int index, size_t size, const char* kind) {
  if (index < 0 || static_cast<size_t>(index) >= size) {
    throw std::runtime_error(std::string(kind) + " index " + std::to_string(index) +
                             " out of range (the model has " + std::to_string(size) + ")");
  }
}

}  // namespace

extern "C" {

int ep_load(const char* folder, ep_model** model) {
  if (model == nullptr) return EP_ERROR;
  *model = new (std::nothrow) ep_model();
  if (*model == nullptr) return EP_ERROR;
  return Guard(*model, [&] { Load(*model, folder); });
}

const char* ep_error(const ep_model* model) {
  if (model == nullptr) return "out of memory (no model)";
  return model->failed ? model->error.c_str() : nullptr;
}

int ep_num_inputs(const ep_model* model) {
  return model == nullptr ? 0 : static_cast<int>(model->inputs.size());
}

int ep_num_outputs(const ep_model* model) {
  return model == nullptr ? 0 : static_cast<int>(model->outputs.size());
}

int ep_input_info(ep_model* model, int index, ep_tensor_info* info) {
  return Guard(model, [&] {
    CheckIndex(index, model->inputs.size(), "input");
    Describe(model->inputs[index], info);
  });
}

int ep_output_info(ep_model* model, int index, ep_tensor_info* info) {
  return Guard(model, [&] {
    CheckIndex(index, model->outputs.size(), "output");
    Describe(model->outputs[index], info);
  });
}

int ep_set_input(ep_model* model, const char* name, const void* data, size_t nbytes) {
  return Guard(model, [&] {
    if (!model->main) throw std::runtime_error("the model did not load");
    int i = model->Index(model->inputs, name == nullptr ? "" : name, "input");
    const TensorDesc& d = model->inputs[i];
    if (data == nullptr || nbytes != d.nbytes) {
      throw std::runtime_error("input '" + d.name + "' takes " + std::to_string(d.nbytes) +
                               " bytes (" + d.dtype + "), got " + std::to_string(nbytes));
    }
    if (!model->values[i]) {
      static const ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
      model->values[i] = alloc(ffi::Shape(d.shape), d.dl_dtype, model->device, ffi::Any())
                             .cast<ffi::Tensor>();
    }
    static const ffi::Function copy = Global("runtime.TVMTensorCopyFromBytes");
    copy(*model->values[i], const_cast<void*>(data), nbytes);
  });
}

int ep_run(ep_model* model) {
  return Guard(model, [&] {
    if (!model->main) throw std::runtime_error("the model did not load");
    std::vector<ffi::AnyView> args;
    for (size_t i = 0; i < model->values.size(); ++i) {
      if (!model->values[i]) {
        throw std::runtime_error("input '" + model->inputs[i].name + "' was never set");
      }
      args.emplace_back(*model->values[i]);
    }
    ffi::Any result;
    model->main->CallPacked(args.data(), static_cast<int>(args.size()), &result);
    std::vector<ffi::Tensor> results;
    Flatten(result, &results);
    if (results.size() != model->outputs.size()) {
      throw std::runtime_error("the model returned " + std::to_string(results.size()) +
                               " tensors; manifest.json lists " +
                               std::to_string(model->outputs.size()));
    }
    if (model->device.device_type != kDLCPU) {  // kernels run asynchronously: wait for them
      static const ffi::Function sync = Global("runtime.Device_StreamSync");
      sync(model->device, static_cast<void*>(nullptr));
    }
    for (size_t i = 0; i < results.size(); ++i) {
      const DLTensor* dl = results[i].GetDLTensorPtr();
      TensorDesc& d = model->outputs[i];
      d.shape.assign(dl->shape, dl->shape + dl->ndim);
      d.nbytes = ByteSize(d.shape, dl->dtype);
    }
    model->results = std::move(results);
  });
}

int ep_get_output(ep_model* model, const char* name, void* data, size_t nbytes) {
  return Guard(model, [&] {
    int i = model->Index(model->outputs, name == nullptr ? "" : name, "output");
    if (static_cast<size_t>(i) >= model->results.size()) {
      throw std::runtime_error("no output yet: call ep_run first");
    }
    const TensorDesc& d = model->outputs[i];
    if (data == nullptr || nbytes != d.nbytes) {
      throw std::runtime_error("output '" + d.name + "' holds " + std::to_string(d.nbytes) +
                               " bytes (" + d.dtype + "), got a buffer of " +
                               std::to_string(nbytes));
    }
    static const ffi::Function copy = Global("runtime.TVMTensorCopyToBytes");
    copy(model->results[i], data, nbytes);
  });
}

void ep_free(ep_model* model) {
  try {
    delete model;
  } catch (...) {
  }
}

}  // extern "C"
