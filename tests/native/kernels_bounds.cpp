// The fused conversions' per-pixel code (src/runtime/native/kernels.cuh) over every small size
// and chroma setting, with exactly-sized planes, under AddressSanitizer and UBSan: a read or
// write outside a plane, or undefined arithmetic, fails the run. On the GPU such a read would
// be an illegal address that kills the CUDA context. Compiled and run by tests/kernels_bounds.rs.
#include "kernels.cuh"
#include <cstdio>
#include <cstdlib>
#include <cstring>
int main() {
  int sizes[][2] = {{1,1},{1,2},{2,1},{1,3},{3,1},{2,2},{3,3},{5,7},{7,5},{8,8},{9,9},{1,17},{17,1},{33,65}};
  long total = 0;
  for (auto& hw : sizes) for (int f = 0; f < 2; ++f) for (int hc = 0; hc < 2; ++hc) for (int vc = 0; vc < 2; ++vc) {
    int H = hw[0], W = hw[1], ch = (H + 1) / 2, cw = (W + 1) / 2;
    unsigned char* y = (unsigned char*)malloc(H * W);
    unsigned char* u = (unsigned char*)malloc(ch * cw);
    unsigned char* v = (unsigned char*)malloc(ch * cw);
    unsigned char* uv = (unsigned char*)malloc(ch * cw * 2);
    unsigned char* out = (unsigned char*)malloc(H * W * 3);
    for (int i = 0; i < H * W; ++i) y[i] = rand();
    for (int i = 0; i < ch * cw; ++i) { u[i] = rand(); v[i] = rand(); }
    for (int i = 0; i < ch * cw * 2; ++i) uv[i] = rand();
    VkYuvToRgb a{};
    a.y = y; a.out = out; a.y_row = W; a.y_col = 1; a.height = H; a.width = W;
    a.filtered = f; a.h_cosited = hc; a.v_cosited = vc;
    int c[5] = {298, 459, 541, -55, -136}; memcpy(a.coef, c, sizeof c);
    if (f) { a.u = uv; a.v = uv + 1; a.c_row = cw * 2; a.c_col = 2; } else { a.u = u; a.v = v; a.c_row = cw; a.c_col = 1; }
    for (int r = 0; r < H; ++r) for (int x = 0; x < W; ++x) vk_yuv_pixel(a, r, x);
    VkRgbToYuv b{};
    unsigned char* yo = (unsigned char*)malloc(H * W);
    unsigned char* uo = (unsigned char*)malloc(ch * cw);
    unsigned char* vo = (unsigned char*)malloc(ch * cw);
    b.rgb = out; b.rgb_row = W * 3; b.rgb_col = 3; b.rgb_chan = 1; b.y = yo; b.y_row = W; b.u = uo; b.v = vo;
    b.c_row = cw; b.c_col = 1; b.height = H; b.width = W; b.h_cosited = hc; b.v_cosited = vc;
    int k[12] = {47,157,16,4096,-26,-87,112,32768,112,-102,-10,32768}; memcpy(b.coef, k, sizeof k);
    for (int i = 0; i < ch; ++i) for (int j = 0; j < cw; ++j) vk_rgb_block(b, i, j);
    for (int i = 0; i < H * W; ++i) total += yo[i];
    free(y); free(u); free(v); free(uv); free(out); free(yo); free(uo); free(vo);
  }
  printf("ok %ld\n", total);
}
