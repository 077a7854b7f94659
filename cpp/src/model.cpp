// david::Model on the ONNX Runtime C++ API. The ONNX Runtime and nlohmann-json headers are included
// here only: a program using the library includes david/model.hpp and links the library.
#define ORT_API_MANUAL_INIT  // checked initialisation: a runtime older than the headers is an error, not a crash
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "david/model.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

namespace david {
namespace {

using nlohmann::json;

constexpr const char* kManifestFormat = "david-infer-manifest";
// The maps a graph may give and where Maps keeps each: names only (channels and finishing come from
// the manifest and happen inside the graph).
const std::pair<const char*, std::vector<float> Maps::*> kTasks[] = {
    {"depth", &Maps::depth}, {"normal", &Maps::normal}, {"foreground", &Maps::foreground}};

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::ostringstream out;
  out << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

// The C++ API's global function table, set once: GetApi returns null when the library loaded at
// run time is older than the headers this file was compiled with.
void init_onnxruntime() {
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
      failure = std::string("the ONNX Runtime library loaded (") + base->GetVersionString() +
                ") is older than the headers this program was built with (API version " +
                std::to_string(ORT_API_VERSION) + "); use a runtime at least as new as the headers";
      return;
    }
    Ort::InitApi(api);
  });
  if (!failure.empty()) throw ModelError(failure);
}

Ort::Env& shared_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "david");  // one per process, as ONNX Runtime wants
  return env;
}

json read_manifest(const std::string& path, const std::string& model_path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ModelError(model_path + ": no manifest beside it (expected " + path +
                     "); export the model with `david-infer export ... --prepost`, which writes both");
  }
  try {
    return json::parse(in);
  } catch (const json::exception& exc) {
    throw ModelError(path + ": not a JSON manifest (" + exc.what() + ")");
  }
}

struct OutputSpec {
  std::string name;
  std::string task;
  std::int64_t channels = 1;  // values per pixel: the last dimension of a 4-D output shape
};

struct GraphSpec {
  std::string input_name;
  ChannelOrder order = ChannelOrder::BGR;
  std::vector<OutputSpec> outputs;
};

const json& field(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) {
    throw ModelError(where + ": the manifest has no \"" + key + "\"");
  }
  return object.at(key);
}

std::string text_field(const json& object, const char* key, const std::string& where) {
  const json& value = field(object, key, where);
  if (!value.is_string()) throw ModelError(where + ": \"" + key + "\" must be a string, got " + value.dump());
  return value.get<std::string>();
}

// The pixels-to-maps part of a manifest ("layout": "prepost" and its "prepost" section, see
// docs/prepost.md); the manifest of a float NCHW network graph is refused with the command that
// makes the right file.
GraphSpec parse_manifest(const json& manifest, const std::string& path) {
  if (!manifest.is_object() || manifest.value("format", json()) != kManifestFormat) {
    throw ModelError(path + ": not a david-infer manifest (\"format\" is not \"" + kManifestFormat + "\")");
  }
  const json layout = manifest.value("layout", json());
  if (layout != "prepost") {
    throw ModelError(path + ": its graph is not a pixels-to-maps graph (\"layout\" is " + layout.dump() +
                     ", not \"prepost\"); export one with `david-infer export ... --prepost`, or wrap this "
                     "file with `david-infer export --prepost --from MODEL.onnx -o MODEL-prepost.onnx`");
  }
  const std::string where = path + " (\"prepost\" section)";
  const json& prepost = field(manifest, "prepost", path);
  GraphSpec spec;
  spec.input_name = text_field(prepost, "input", where);
  const std::string dtype = text_field(prepost, "dtype", where);
  // "axes" since david-infer 0.2; earlier manifests call it "layout"
  const std::string tensor_layout = text_field(prepost, prepost.contains("axes") ? "axes" : "layout", where);
  if (dtype != "uint8" || tensor_layout != "NHWC") {
    throw ModelError(where + ": input '" + spec.input_name + "' is " + dtype + " " + tensor_layout +
                     ", expected uint8 NHWC pixels");
  }
  std::string order = text_field(prepost, "channel_order", where);
  std::transform(order.begin(), order.end(), order.begin(), [](unsigned char c) { return std::tolower(c); });
  if (order != "bgr" && order != "rgb") {
    throw ModelError(where + ": channel_order is \"" + order + "\", expected \"bgr\" or \"rgb\"");
  }
  spec.order = order == "rgb" ? ChannelOrder::RGB : ChannelOrder::BGR;
  for (const json& output : field(manifest, "outputs", path)) {
    OutputSpec out{text_field(output, "name", path), text_field(output, "task", path)};
    if (std::none_of(std::begin(kTasks), std::end(kTasks), [&](const auto& t) { return out.task == t.first; })) {
      throw ModelError(path + ": output '" + out.name + "' has unknown task \"" + out.task +
                       "\" (expected depth, normal or foreground)");
    }
    // (N, H, W) or (N, H, W, C): the channels come from the manifest, never from the task's name
    const json& shape = field(output, "shape", path);
    if (!shape.is_array() || (shape.size() != 3 && shape.size() != 4) ||
        (shape.size() == 4 && !(shape[3].is_number_integer() && shape[3].get<std::int64_t>() > 0))) {
      throw ModelError(path + ": output '" + out.name + "' has shape " + shape.dump() +
                       ", expected [N, H, W] or [N, H, W, C] with C a positive integer");
    }
    out.channels = shape.size() == 4 ? shape[3].get<std::int64_t>() : 1;
    spec.outputs.push_back(std::move(out));
  }
  if (spec.outputs.empty()) throw ModelError(path + ": the manifest lists no outputs");
  return spec;
}

// The graph itself must have what its manifest says (a manifest beside another file would
// otherwise give wrong maps, or a crash inside Run).
void check_graph(Ort::Session& session, const GraphSpec& spec, const std::string& model_path) {
  Ort::AllocatorWithDefaultOptions allocator;
  if (session.GetInputCount() != 1) {
    throw ModelError(model_path + ": the graph has " + std::to_string(session.GetInputCount()) +
                     " inputs, its manifest one ('" + spec.input_name + "'); the manifest belongs to another file");
  }
  const std::string input_name = session.GetInputNameAllocated(0, allocator).get();
  const Ort::TypeInfo input_type = session.GetInputTypeInfo(0);  // owns what the view below reads
  const auto input_info = input_type.GetTensorTypeAndShapeInfo();
  const auto input_shape = input_info.GetShape();
  if (input_name != spec.input_name || input_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ||
      input_shape.size() != 4 || (input_shape[3] != 3 && input_shape[3] != -1)) {
    throw ModelError(model_path + ": the graph's input is '" + input_name + "' " + shape_text(input_shape) +
                     " of ONNX type " + std::to_string(input_info.GetElementType()) + ", its manifest says uint8 '" +
                     spec.input_name + "' (N, H, W, 3); the manifest belongs to another file");
  }
  std::vector<std::string> graph_outputs;
  for (std::size_t i = 0; i < session.GetOutputCount(); ++i) {
    graph_outputs.emplace_back(session.GetOutputNameAllocated(i, allocator).get());
  }
  for (const OutputSpec& out : spec.outputs) {
    const auto found = std::find(graph_outputs.begin(), graph_outputs.end(), out.name);
    if (found == graph_outputs.end()) {
      throw ModelError(model_path + ": its manifest lists output '" + out.name +
                       "', which the graph does not have; the manifest belongs to another file");
    }
    const Ort::TypeInfo type = session.GetOutputTypeInfo(found - graph_outputs.begin());
    if (type.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw ModelError(model_path + ": output '" + out.name + "' is not float32");
    }
  }
}

std::vector<float>& map_of(Maps& maps, const std::string& task) {
  for (const auto& [name, field] : kTasks) {
    if (task == name) return maps.*field;
  }
  throw ModelError("no map for the task \"" + task + "\"");  // parse_manifest refuses such outputs first
}

}  // namespace

const char* to_string(ChannelOrder order) { return order == ChannelOrder::RGB ? "rgb" : "bgr"; }

std::string manifest_path_for(const std::string& model_path) {
  const std::string suffix = ".onnx";
  const std::size_t slash = model_path.find_last_of('/');
  const std::size_t name_start = slash == std::string::npos ? 0 : slash + 1;
  if (model_path.size() > name_start + suffix.size() &&
      model_path.compare(model_path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    return model_path.substr(0, model_path.size() - suffix.size()) + ".json";
  }
  return model_path + ".json";
}

struct Model::Impl {
  std::string path;
  ModelOptions options;
  GraphSpec spec;
  std::vector<std::string> tasks;
  std::vector<const char*> output_names;
  std::unique_ptr<Ort::Session> session;
};

Model::Model(const std::string& onnx_path, const ModelOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->path = onnx_path;
  impl_->options = options;
  if (!std::ifstream(onnx_path, std::ios::binary)) {
    throw ModelError(onnx_path + ": no such model file (or it cannot be read)");
  }
  const std::string manifest = manifest_path_for(onnx_path);
  impl_->spec = parse_manifest(read_manifest(manifest, onnx_path), manifest);
  for (const OutputSpec& out : impl_->spec.outputs) {
    impl_->tasks.push_back(out.task);
    impl_->output_names.push_back(out.name.c_str());
  }
  init_onnxruntime();
  Ort::SessionOptions session_options;
  if (options.intra_op_threads > 0) session_options.SetIntraOpNumThreads(options.intra_op_threads);
  try {
    impl_->session = std::make_unique<Ort::Session>(shared_env(), onnx_path.c_str(), session_options);
  } catch (const Ort::Exception& exc) {
    throw ModelError(onnx_path + ": ONNX Runtime cannot open it (" + exc.what() + ")");
  }
  check_graph(*impl_->session, impl_->spec, onnx_path);
}

Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

const std::vector<std::string>& Model::tasks() const { return impl_->tasks; }

ChannelOrder Model::channel_order() const { return impl_->spec.order; }

Maps Model::predict(const std::uint8_t* pixels, int height, int width, ChannelOrder order) const {
  return predict(pixels, height, width, 3, order);
}

Maps Model::predict(const std::uint8_t* pixels, int height, int width, int channels, ChannelOrder order) const {
  if (channels != 3) {
    throw InputError("image has " + std::to_string(channels) +
                     " channels, expected 3 (BGR or RGB): convert gray to colour, drop or flatten alpha first");
  }
  if (pixels == nullptr || height < 1 || width < 1) {
    throw InputError("image of " + std::to_string(height) + " x " + std::to_string(width) +
                     " pixels: expected at least 1 x 1 pixels and a buffer");
  }
  const std::int64_t count = static_cast<std::int64_t>(height) * width;
  if (count > impl_->options.max_pixels) {
    throw InputError("image of " + std::to_string(width) + " x " + std::to_string(height) + " pixels is over the " +
                     std::to_string(impl_->options.max_pixels) + " pixel limit (ModelOptions::max_pixels)");
  }
  const std::vector<std::int64_t> shape{1, height, width, 3};
  const std::size_t bytes = static_cast<std::size_t>(count) * 3;
  std::vector<std::uint8_t> converted;
  // ONNX Runtime only reads its inputs, so the caller's buffer is fed as it is when no channel
  // swap is needed.
  std::uint8_t* feed = const_cast<std::uint8_t*>(pixels);
  if (order != impl_->spec.order) {
    converted.resize(bytes);
    for (std::size_t i = 0; i < bytes; i += 3) {
      converted[i] = pixels[i + 2];
      converted[i + 1] = pixels[i + 1];
      converted[i + 2] = pixels[i];
    }
    feed = converted.data();
  }
  const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value input = Ort::Value::CreateTensor<std::uint8_t>(memory, feed, bytes, shape.data(), shape.size());
  const char* input_name = impl_->spec.input_name.c_str();
  std::vector<Ort::Value> outputs;
  try {
    outputs = impl_->session->Run(Ort::RunOptions{nullptr}, &input_name, &input, 1, impl_->output_names.data(),
                                  impl_->output_names.size());
  } catch (const Ort::Exception& exc) {
    throw ModelError(impl_->path + ": running the graph on a " + std::to_string(width) + " x " +
                     std::to_string(height) + " image failed (" + exc.what() + ")");
  }
  Maps maps;
  maps.height = height;
  maps.width = width;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const OutputSpec& spec = impl_->spec.outputs[i];
    std::vector<std::int64_t> expected{1, height, width};
    if (spec.channels > 1) expected.push_back(spec.channels);
    const auto got = outputs[i].GetTensorTypeAndShapeInfo().GetShape();
    if (got != expected) {
      throw ModelError(impl_->path + ": output '" + spec.name + "' has shape " + shape_text(got) + ", expected " +
                       shape_text(expected) + " (the input's size)");
    }
    const float* data = outputs[i].GetTensorData<float>();
    const std::size_t size = static_cast<std::size_t>(count) * static_cast<std::size_t>(spec.channels);
    const std::size_t bad = std::count_if(data, data + size, [](float v) { return !std::isfinite(v); });
    if (bad) {
      throw ModelError(impl_->path + ": output '" + spec.name + "' has " + std::to_string(bad) +
                       " NaN or infinite values; the model file is broken or its weights are");
    }
    map_of(maps, spec.task).assign(data, data + size);
  }
  return maps;
}

}  // namespace david
