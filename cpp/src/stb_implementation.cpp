// The stb_image and stb_image_write implementations, compiled once here from their headers (so a
// distribution's header-only stb, or a copy of the upstream files, is enough).
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
