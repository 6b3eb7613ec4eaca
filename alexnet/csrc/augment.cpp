// Crops for a batch in one pass (paper §4.1): for each image b, the crop×crop window at (top, left),
// mirrored where flip, as float, minus the mean image at the same pixels, plus a per-image colour
// shift. In: uint8 (B, S, S, 3) images, float (S, S, 3) mean. Out: float (B, crop, crop, 3).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

torch::Tensor crop_normalize(torch::Tensor images, torch::Tensor mean, torch::Tensor top, torch::Tensor left,
                             torch::Tensor flip, torch::Tensor shift, int64_t crop) {
  TORCH_CHECK(images.dim() == 4 && images.size(3) == 3 && images.scalar_type() == at::kByte && images.is_contiguous(),
              "crop kernel: contiguous uint8 (B, H, W, 3) images");
  TORCH_CHECK(mean.sizes() == images.sizes().slice(1) && mean.scalar_type() == at::kFloat && mean.is_contiguous(),
              "crop kernel: a float (H, W, 3) mean image");
  const int64_t B = images.size(0), H = images.size(1), W = images.size(2);
  auto tops = top.to(at::kLong).contiguous(), lefts = left.to(at::kLong).contiguous();
  auto flips = flip.to(at::kBool).contiguous();
  auto shifts = shift.to(at::kFloat).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = tops.data_ptr<int64_t>()[b], l = lefts.data_ptr<int64_t>()[b];
    TORCH_CHECK(t >= 0 && l >= 0 && t + crop <= H && l + crop <= W, "crop kernel: window outside the image");
  }
  auto out = torch::empty({B, crop, crop, 3}, mean.options());
  const uint8_t* img = images.data_ptr<uint8_t>();
  const float* m = mean.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * crop, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> shift_row(crop * 3);  // image shift_of's colour shift, repeated along a row
    int64_t shift_of = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / crop, y = row % crop;
      const int64_t t = tops.data_ptr<int64_t>()[b], l = lefts.data_ptr<int64_t>()[b];
      const uint8_t* src = img + ((b * H + t + y) * W + l) * 3;
      const float* mrow = m + ((t + y) * W + l) * 3;
      const float* s = shifts.data_ptr<float>() + b * 3;
      float* dst = o + row * crop * 3;
      if (flips.data_ptr<bool>()[b]) {
        for (int64_t x = 0; x < crop; ++x) {
          const int64_t from = (crop - 1 - x) * 3;
          for (int c = 0; c < 3; ++c) dst[x * 3 + c] = static_cast<float>(src[from + c]) - mrow[from + c] + s[c];
        }
      } else {  // without an i % 3 in it, this loop vectorizes: 2-3x faster
        if (b != shift_of) {
          for (int64_t i = 0; i < crop * 3; ++i) shift_row[i] = s[i % 3];
          shift_of = b;
        }
        for (int64_t i = 0; i < crop * 3; ++i) dst[i] = static_cast<float>(src[i]) - mrow[i] + shift_row[i];
      }
    }
  });
  return out;
}
