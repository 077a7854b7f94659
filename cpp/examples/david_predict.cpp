// david_predict: the maps of image files from a pixels-to-maps graph, written as .npy (float32,
// full precision) and PNG (8-bit previews) beside each other.
//
//   david_predict MODEL.onnx IMAGE [IMAGE...] [-o OUTDIR] [--threads N] [--timings]
//
// For each IMAGE it writes OUTDIR/NAME.{depth,normal,foreground}.{npy,png} for the tasks the model
// has (NAME: the file name without its extension). An image's files appear all together or not at
// all. Exit status: 0 all written, 1 some image or the model failed (one line each on stderr),
// 2 bad arguments. --timings adds each image's decode, predict and write milliseconds to its line.
#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "david/model.hpp"

namespace fs = std::filesystem;

namespace {

constexpr const char* kProgram = "david_predict";
constexpr const char* kUsage = "MODEL.onnx IMAGE [IMAGE...] [-o OUTDIR] [--threads N] [--timings]";
constexpr const char* kPartial = ".david-partial";  // temporaries, renamed into place at the end

struct Image {
  int height = 0;
  int width = 0;
  std::vector<std::uint8_t> rgb;
};

// The image's header is checked before any pixel is decoded, so a small file declaring a huge
// image is refused at once.
Image read_image(const std::string& path, std::int64_t max_pixels) {
  int width = 0, height = 0, channels = 0;
  if (!stbi_info(path.c_str(), &width, &height, &channels)) {
    // stb_image reports the last format it tried, so its reason is a hint at most.
    throw david::InputError(path + ": cannot read it as an image (stb_image: " + stbi_failure_reason() +
                            "); expected a PNG, JPEG, BMP, TGA, GIF or PNM file of at most 2^30 bytes of pixels");
  }
  if (static_cast<std::int64_t>(width) * height > max_pixels) {
    throw david::InputError(path + ": " + std::to_string(width) + " x " + std::to_string(height) +
                            " pixels is over the " + std::to_string(max_pixels) + " pixel limit");
  }
  if (channels == 2 || channels == 4) {
    throw david::InputError(path + ": has an alpha channel (" + std::to_string(channels) +
                            " channels), expected RGB or gray; flatten it onto a background first");
  }
  // 3 channels asked for: stb_image repeats gray into R, G and B, and scales 16-bit files to 8 bits.
  std::uint8_t* data = stbi_load(path.c_str(), &width, &height, &channels, 3);
  if (data == nullptr) {
    throw david::InputError(path + ": cannot decode it (" + std::string(stbi_failure_reason()) +
                            "); the file is truncated or corrupt");
  }
  Image image{height, width, std::vector<std::uint8_t>(data, data + static_cast<std::size_t>(width) * height * 3)};
  stbi_image_free(data);
  return image;
}

bool little_endian() {
  const std::uint16_t one = 1;
  std::uint8_t first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// NumPy's .npy format, version 1.0: magic, header length, a dict padded with spaces to 64 bytes.
void write_npy(const fs::path& path, const std::vector<float>& values, const std::vector<int>& shape) {
  std::string dims;
  for (int d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // "(H, W)"; a 1-d shape keeps its comma
  std::string header = std::string("{'descr': '") + (little_endian() ? "<" : ">") +
                       "f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  header.append(63 - (preamble + header.size()) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  const std::uint16_t length = static_cast<std::uint16_t>(header.size());
  const char lengths[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(lengths, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  out.close();
  if (!out) throw david::Error(path.string() + ": cannot write it (disk full or no permission?)");
}

void write_png(const fs::path& path, const std::vector<std::uint8_t>& pixels, int height, int width, int channels) {
  if (!stbi_write_png(path.c_str(), width, height, channels, pixels.data(), width * channels)) {
    throw david::Error(path.string() + ": cannot write it (disk full or no permission?)");
  }
}

std::uint8_t to_byte(double value) { return static_cast<std::uint8_t>(std::lround(std::clamp(value, 0.0, 255.0))); }

// Depth min-max normalised to 0..255 (a flat map is black); the .npy keeps the values.
std::vector<std::uint8_t> depth_preview(const std::vector<float>& depth) {
  const auto [lo, hi] = std::minmax_element(depth.begin(), depth.end());
  const double span = *hi - *lo;
  std::vector<std::uint8_t> out(depth.size(), 0);
  if (span > 0) {
    std::transform(depth.begin(), depth.end(), out.begin(), [&](float v) { return to_byte((v - *lo) / span * 255.0); });
  }
  return out;
}

// Normals as (n + 1) / 2 * 255 per component (x -> R, y -> G, z -> B); the mask as 0..255 gray.
std::vector<std::uint8_t> unit_preview(const std::vector<float>& values, double offset, double scale) {
  std::vector<std::uint8_t> out(values.size());
  std::transform(values.begin(), values.end(), out.begin(), [&](float v) { return to_byte((v + offset) * scale); });
  return out;
}

struct PlannedFile {
  fs::path final_path;
  fs::path temporary;
};

// Writes every file of one image under temporary names, then renames them into place; on any
// failure the temporaries are removed and nothing of this image is left.
class ImageOutputs {
 public:
  ImageOutputs(fs::path outdir, std::string name) : outdir_(std::move(outdir)), name_(std::move(name)) {}
  ImageOutputs(const ImageOutputs&) = delete;
  ImageOutputs& operator=(const ImageOutputs&) = delete;
  ~ImageOutputs() {
    std::error_code ignored;
    for (const PlannedFile& file : files_) fs::remove(file.temporary, ignored);
  }

  fs::path temporary(const std::string& suffix) {
    PlannedFile file{outdir_ / (name_ + suffix), outdir_ / ("." + name_ + suffix + kPartial)};
    files_.push_back(file);
    return file.temporary;
  }

  void commit() {
    for (const PlannedFile& file : files_) fs::rename(file.temporary, file.final_path);
    files_.clear();
  }

 private:
  fs::path outdir_;
  std::string name_;
  std::vector<PlannedFile> files_;
};

void write_maps(const david::Maps& maps, const fs::path& outdir, const std::string& name) {
  ImageOutputs outputs(outdir, name);
  const int h = maps.height, w = maps.width;
  if (!maps.depth.empty()) {
    write_npy(outputs.temporary(".depth.npy"), maps.depth, {h, w});
    write_png(outputs.temporary(".depth.png"), depth_preview(maps.depth), h, w, 1);
  }
  if (!maps.normal.empty()) {
    write_npy(outputs.temporary(".normal.npy"), maps.normal, {h, w, 3});
    write_png(outputs.temporary(".normal.png"), unit_preview(maps.normal, 1.0, 127.5), h, w, 3);
  }
  if (!maps.foreground.empty()) {
    write_npy(outputs.temporary(".foreground.npy"), maps.foreground, {h, w});
    write_png(outputs.temporary(".foreground.png"), unit_preview(maps.foreground, 0.0, 255.0), h, w, 1);
  }
  outputs.commit();
}

using Clock = std::chrono::steady_clock;

double milliseconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

int usage(const std::string& problem) {
  std::cerr << kProgram << ": error: " << problem << "\n"
            << "usage: " << kProgram << " " << kUsage << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  fs::path outdir = ".";
  int threads = 0;
  bool timings = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "-o" || arg == "--output" || arg == "--threads") && i + 1 >= argc) return usage(arg + " needs a value");
    if (arg == "-o" || arg == "--output") {
      outdir = argv[++i];
    } else if (arg == "--threads") {
      const std::string value = argv[++i];
      if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos || value.size() > 4) {
        return usage("--threads takes a whole number (0 = all cores), got '" + value + "'");
      }
      threads = std::stoi(value);
    } else if (arg == "--timings") {
      timings = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << "usage: " << kProgram << " " << kUsage << "\n";
      return 0;
    } else if (arg.size() > 1 && arg[0] == '-') {
      return usage("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 2) return usage("expected a model file and at least one image");
  std::error_code error;
  if (!fs::is_directory(outdir, error)) return usage("output folder " + outdir.string() + " does not exist");

  david::ModelOptions options;
  options.intra_op_threads = threads;
  std::unique_ptr<david::Model> model;
  try {
    model = std::make_unique<david::Model>(positional[0], options);
  } catch (const david::Error& exc) {
    std::cerr << kProgram << ": error: " << exc.what() << "\n";
    return 1;
  }
  int failed = 0;
  std::map<std::string, std::string> written;  // NAME -> the image whose files were written under it
  for (std::size_t i = 1; i < positional.size(); ++i) {
    const std::string& path = positional[i];
    const std::string name = fs::path(path).stem().string();
    try {
      const auto earlier = written.find(name);
      if (earlier != written.end()) {
        throw david::InputError(path + ": its files would replace those of " + earlier->second + " (both are named " +
                                name + "); rename one or run it with another output folder");
      }
      const Clock::time_point start = Clock::now();
      const Image image = read_image(path, options.max_pixels);
      const Clock::time_point decoded = Clock::now();
      const david::Maps maps = model->predict(image.rgb.data(), image.height, image.width, david::ChannelOrder::RGB);
      const Clock::time_point predicted = Clock::now();
      write_maps(maps, outdir, name);
      written.emplace(name, path);
      std::cout << path << ": " << image.width << " x " << image.height << " -> " << outdir.string();
      if (timings) {
        std::cout << std::fixed << std::setprecision(1) << " (decode " << milliseconds(start, decoded) << " ms, predict " << milliseconds(decoded, predicted)
                  << " ms, write " << milliseconds(predicted, Clock::now()) << " ms)";
      }
      std::cout << "\n";
    } catch (const david::Error& exc) {
      std::cerr << kProgram << ": error: " << exc.what() << "\n";
      ++failed;
    } catch (const fs::filesystem_error& exc) {
      std::cerr << kProgram << ": error: " << path << ": " << exc.what() << "\n";
      ++failed;
    }
  }
  return failed ? 1 : 0;
}
