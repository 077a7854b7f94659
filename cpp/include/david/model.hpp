// david::Model: runs a david-infer pixels-to-maps ONNX graph (`david-infer export --prepost`) with
// the ONNX Runtime C++ API. The graph takes uint8 pixels (N, H, W, 3) and returns the maps at the
// input's size, so a host needs no preprocessing or postprocessing of its own.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace david {

// Base class of every error this library throws on purpose; the message names the file or input
// at fault, what was expected and what to do.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A model or manifest file is missing, unreadable or not a pixels-to-maps graph.
class ModelError : public Error {
 public:
  using Error::Error;
};

// An image passed in is not something the model can take (size, channel count).
class InputError : public Error {
 public:
  using Error::Error;
};

enum class ChannelOrder { BGR, RGB };

// "bgr" / "rgb"
const char* to_string(ChannelOrder order);

// The maps of one image, row-major at the image's size. A vector is empty when the model has no
// such task.
struct Maps {
  int height = 0;
  int width = 0;
  std::vector<float> depth;       // (H, W): relative depth as exported (negated: larger = nearer)
  std::vector<float> normal;      // (H, W, 3): unit surface normals, x y z per pixel
  std::vector<float> foreground;  // (H, W): soft mask in [0, 1]
};

struct ModelOptions {
  int intra_op_threads = 0;              // ONNX Runtime's intra-op threads; 0 = its default (all cores)
  std::int64_t max_pixels = 100000000;  // images above this are refused (as the Python runtime does)
};

// The manifest path beside a model file: `x.onnx` -> `x.json`, anything else -> `x.ext.json`.
std::string manifest_path_for(const std::string& model_path);

class Model {
 public:
  // Opens `onnx_path` and the manifest beside it; throws ModelError when either is missing or the
  // pair does not describe a pixels-to-maps graph (uint8 (N, H, W, 3) input named by the manifest).
  explicit Model(const std::string& onnx_path, const ModelOptions& options = {});
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // The tasks the graph has, in its output order ("depth", "normal", "foreground").
  const std::vector<std::string>& tasks() const;
  // The channel order the graph expects (from the manifest); predict converts to it.
  ChannelOrder channel_order() const;

  // The maps of one interleaved 8-bit image of `height` x `width` pixels in `order` (BGR by
  // default, OpenCV's order), rows packed without padding. Throws InputError for a bad size.
  // Several threads may call predict on one Model at once (ONNX Runtime's Run is thread-safe).
  Maps predict(const std::uint8_t* pixels, int height, int width, ChannelOrder order = ChannelOrder::BGR) const;
  // The same for a buffer of `channels` per pixel: anything but 3 is refused with InputError.
  Maps predict(const std::uint8_t* pixels, int height, int width, int channels, ChannelOrder order) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace david
