// The training-set statistics of one preprocessed image in one pass (paper §2: the mean image; §4.1: the
// covariance of the RGB values of all pixels). Adds the image to a float64 sum image, and its pixels'
// RGB sums and products to float64 totals: summed exactly in integers first, so the totals stay exact.
// In: uint8 (H, W, 3); image_sum float64 (H, W, 3); pixel_sum float64 (3,); pixel_outer float64 (3, 3).
#include <torch/extension.h>

void add_image_stats(torch::Tensor image, torch::Tensor image_sum, torch::Tensor pixel_sum,
                     torch::Tensor pixel_outer) {
  TORCH_CHECK(image.dim() == 3 && image.size(2) == 3 && image.scalar_type() == at::kByte && image.is_contiguous(),
              "stats kernel: a contiguous uint8 (H, W, 3) image");
  TORCH_CHECK(image_sum.sizes() == image.sizes() && image_sum.scalar_type() == at::kDouble &&
                  image_sum.is_contiguous(), "stats kernel: a float64 (H, W, 3) sum image");
  TORCH_CHECK(pixel_sum.numel() == 3 && pixel_outer.numel() == 9 && pixel_sum.scalar_type() == at::kDouble &&
                  pixel_outer.scalar_type() == at::kDouble && pixel_sum.is_contiguous() && pixel_outer.is_contiguous(),
              "stats kernel: float64 (3,) and (3, 3) pixel totals");
  const int64_t H = image.size(0), W = image.size(1);
  TORCH_CHECK(W <= 32768, "stats kernel: rows of at most 32768 pixels");  // a row's sums fit in int32
  const uint8_t* p = image.data_ptr<uint8_t>();
  double* s = image_sum.data_ptr<double>();
  for (int64_t i = 0; i < H * W * 3; ++i) s[i] += p[i];
  int64_t total[9] = {0};  // r, g, b, rr, rg, rb, gg, gb, bb
  for (int64_t y = 0; y < H; ++y) {
    int32_t row[9] = {0};
    const uint8_t* q = p + y * W * 3;
    for (int64_t x = 0; x < W; ++x) {
      const int32_t r = q[3 * x], g = q[3 * x + 1], b = q[3 * x + 2];
      row[0] += r, row[1] += g, row[2] += b;
      row[3] += r * r, row[4] += r * g, row[5] += r * b, row[6] += g * g, row[7] += g * b, row[8] += b * b;
    }
    for (int k = 0; k < 9; ++k) total[k] += row[k];
  }
  double* ps = pixel_sum.data_ptr<double>();
  double* po = pixel_outer.data_ptr<double>();
  for (int c = 0; c < 3; ++c) ps[c] += static_cast<double>(total[c]);
  const int pair[3][3] = {{3, 4, 5}, {4, 6, 7}, {5, 7, 8}};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) po[i * 3 + j] += static_cast<double>(total[pair[i][j]]);
}
