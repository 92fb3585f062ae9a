// The frame path's colour conversions as single fused kernels: 4:2:0 YUV (NV12, I420) to RGB
// for the model and the overlay, and RGB to I420/NV12 for the encoder. The same arithmetic as
// src/processing/colour.rs (GStreamer's `videoconvert` 1.22 to the bit), one thread per pixel
// (or per 2x2 block) instead of ~85 (or ~40) full-frame tensor operations.
//
// This file is compiled twice from the same text:
// - by NVRTC at run time, into the CUDA kernels at the bottom (src/runtime/native/mod.rs hands
//   it over; there are no standard headers there, hence the plain types);
// - by the host compiler into the shim, where the tests run the same per-pixel functions over
//   CPU tensors and compare them with the tensor-op reference.

#ifdef __CUDACC_RTC__
#define VK_FN __device__ __forceinline__
#else
#define VK_FN static inline
#endif

typedef unsigned char vk_u8;
typedef long long vk_i64;

// YUV 4:2:0 -> uint8 RGB [H, W, 3] (contiguous). Strides in bytes.
struct VkYuvToRgb {
  const vk_u8* y;
  const vk_u8* u;
  const vk_u8* v;
  vk_u8* out;
  vk_i64 y_row, y_col;
  vk_i64 c_row, c_col;  // both chroma planes (NV12: the interleaved plane, c_col 2)
  int height, width;
  int filtered;  // 0: nearest chroma (GStreamer's I420 fast path); 1: its 2-tap filters (NV12)
  int h_cosited, v_cosited;
  int coef[5];  // Y for every channel, V for R, U for B, U for G, V for G (colour.rs)
};

// uint8 RGB [H, W, 3] (any strides) -> the Y plane and both chroma planes of I420 or NV12.
struct VkRgbToYuv {
  const vk_u8* rgb;
  vk_u8* y;
  vk_u8* u;
  vk_u8* v;
  vk_i64 rgb_row, rgb_col, rgb_chan;
  vk_i64 y_row;
  vk_i64 c_row, c_col;  // I420: 1; NV12: 2 (u and v one byte apart)
  int height, width;
  int h_cosited, v_cosited;
  int coef[12];  // rows Y, U, V of (R, G, B, offset), in 1/256 (colour.rs)
};

// Floor division by a positive power of two, for either sign.
VK_FN int vk_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// (x - 128) as a signed byte copied into both halves of a 16-bit word.
VK_FN int vk_splat(int x) {
  int s = x - 128;
  return s * 257 + (s < 0 ? 256 : 0);
}

// The high 16 bits of a 16 x 16 bit signed product.
VK_FN int vk_mulhs(int word, int coefficient) { return vk_floor_div(word * coefficient, 65536); }

VK_FN int vk_channel(int sum) {
  int c = sum < -128 ? -128 : (sum > 127 ? 127 : sum);
  return c + 128;
}

// Output `o` of a chroma axis of `n` samples, upsampled 2x: (w0 * c[k0] + w1 * c[k1] + add)
// >> shift. Nearest repeats each sample; the filters are GStreamer's (between samples 3:1 of
// the two nearest, the first and last outputs the edge samples; co-sited, even outputs the
// samples and odd ones the mean of their neighbours, the last two the last sample).
struct VkTap {
  int k0, k1, w0, w1, add, shift;
};

VK_FN VkTap vk_single(int k) {
  VkTap t = {k, k, 1, 0, 0, 0};
  return t;
}

VK_FN VkTap vk_tap(int o, int n, int filtered, int cosited) {
  if (!filtered) {
    return vk_single(o / 2);
  }
  if (cosited) {
    if (o >= 2 * (n - 1)) {
      return vk_single(n - 1);
    }
    int k = o / 2;
    if (o % 2 == 0) {
      return vk_single(k);
    }
    VkTap t = {k, k + 1, 1, 1, 1, 1};
    return t;
  }
  if (o == 0 || o > 2 * (n - 1)) {
    return vk_single(o == 0 ? 0 : n - 1);
  }
  int k = (o - 1) / 2;
  if ((o - 1) % 2 == 0) {
    VkTap t = {k, k + 1, 3, 1, 2, 2};
    return t;
  }
  VkTap t = {k, k + 1, 1, 3, 2, 2};
  return t;
}

VK_FN int vk_apply(const VkTap& t, int a, int b) { return (t.w0 * a + t.w1 * b + t.add) >> t.shift; }

// One chroma plane at full resolution, at (row, col): horizontally first, each pass rounded.
VK_FN int vk_chroma(const VkYuvToRgb& a, const vk_u8* plane, int row, int col) {
  int rows = (a.height + 1) / 2, cols = (a.width + 1) / 2;
  VkTap h = vk_tap(col, cols, a.filtered, a.h_cosited);
  // GStreamer leaves co-sited rows unfiltered (each row takes its pair's chroma).
  VkTap v = vk_tap(row, rows, a.filtered && !a.v_cosited, 0);
  const vk_u8* r0 = plane + v.k0 * a.c_row;
  const vk_u8* r1 = plane + v.k1 * a.c_row;
  int top = vk_apply(h, r0[h.k0 * a.c_col], r0[h.k1 * a.c_col]);
  int bottom = vk_apply(h, r1[h.k0 * a.c_col], r1[h.k1 * a.c_col]);
  return vk_apply(v, top, bottom);
}

VK_FN void vk_yuv_pixel(const VkYuvToRgb& a, int row, int col) {
  int wy = vk_mulhs(vk_splat(a.y[row * a.y_row + col * a.y_col]), a.coef[0]);
  int wu = vk_splat(vk_chroma(a, a.u, row, col));
  int wv = vk_splat(vk_chroma(a, a.v, row, col));
  vk_u8* out = a.out + ((vk_i64)row * a.width + col) * 3;
  out[0] = (vk_u8)vk_channel(wy + vk_mulhs(wv, a.coef[1]));
  out[1] = (vk_u8)vk_channel(wy + vk_mulhs(wu, a.coef[3]) + vk_mulhs(wv, a.coef[4]));
  out[2] = (vk_u8)vk_channel(wy + vk_mulhs(wu, a.coef[2]));
}

// Component `c` (0 Y, 1 U, 2 V) of the pixel at (row, col), clamped to a byte.
VK_FN int vk_component(const VkRgbToYuv& a, int c, int row, int col) {
  const vk_u8* p = a.rgb + row * a.rgb_row + col * a.rgb_col;
  const int* k = a.coef + 4 * c;
  int sum = p[0] * k[0] + p[a.rgb_chan] * k[1] + p[2 * a.rgb_chan] * k[2] + k[3];
  int value = vk_floor_div(sum, 256);
  return value < 0 ? 0 : (value > 255 ? 255 : value);
}

// A chroma component's rows 2i and 2i+1 at `col`: the mean of the pair (the last row repeated
// when the height is odd), or the even row where chroma is co-sited vertically.
VK_FN int vk_rows(const VkRgbToYuv& a, int c, int i, int col) {
  int top = vk_component(a, c, 2 * i, col);
  if (a.v_cosited) {
    return top;
  }
  int below = 2 * i + 1 < a.height ? 2 * i + 1 : a.height - 1;
  return (top + vk_component(a, c, below, col) + 1) >> 1;
}

// Chroma sample (i, j): the columns as GStreamer's loop leaves them (the mean of each pair;
// co-sited, 1:2:1 around the even column, the left edge and the last column as it does).
VK_FN int vk_subsample(const VkRgbToYuv& a, int c, int i, int j) {
  int w = a.width;
  if (!a.h_cosited) {
    int right = 2 * j + 1 < w ? 2 * j + 1 : w - 1;
    return (vk_rows(a, c, i, 2 * j) + vk_rows(a, c, i, right) + 1) >> 1;
  }
  if (w < 2) {
    return vk_rows(a, c, i, 0);
  }
  int chroma = (w + 1) / 2;
  int centre = vk_rows(a, c, i, 2 * j);
  int left = j == 0 ? vk_rows(a, c, i, 0) : vk_rows(a, c, i, 2 * j - 1);
  int right;
  if (chroma == 1) {
    right = vk_rows(a, c, i, 1);
  } else if (j < chroma - 1) {
    right = vk_rows(a, c, i, 2 * j + 1);
  } else {
    right = centre;
  }
  return (left + 2 * centre + right + 2) >> 2;
}

// The 2x2 block of chroma sample (i, j): up to four Y samples, one U and one V.
VK_FN void vk_rgb_block(const VkRgbToYuv& a, int i, int j) {
  for (int dr = 0; dr < 2; ++dr) {
    for (int dc = 0; dc < 2; ++dc) {
      int row = 2 * i + dr, col = 2 * j + dc;
      if (row < a.height && col < a.width) {
        a.y[row * a.y_row + col] = (vk_u8)vk_component(a, 0, row, col);
      }
    }
  }
  vk_i64 at = i * a.c_row + j * a.c_col;
  a.u[at] = (vk_u8)vk_subsample(a, 1, i, j);
  a.v[at] = (vk_u8)vk_subsample(a, 2, i, j);
}

#ifdef __CUDACC_RTC__
extern "C" __global__ void visiond_yuv420_to_rgb(const VkYuvToRgb a) {
  int col = blockIdx.x * blockDim.x + threadIdx.x;
  int row = blockIdx.y * blockDim.y + threadIdx.y;
  if (col < a.width && row < a.height) {
    vk_yuv_pixel(a, row, col);
  }
}

extern "C" __global__ void visiond_rgb_to_yuv420(const VkRgbToYuv a) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  int i = blockIdx.y * blockDim.y + threadIdx.y;
  if (j < (a.width + 1) / 2 && i < (a.height + 1) / 2) {
    vk_rgb_block(a, i, j);
  }
}
#endif
