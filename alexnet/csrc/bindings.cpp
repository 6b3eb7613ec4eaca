// The Python module of the CPU kernels.
#include <torch/extension.h>

#include <string>

torch::Tensor crop_normalize(torch::Tensor images, torch::Tensor mean, torch::Tensor top, torch::Tensor left,
                             torch::Tensor flip, torch::Tensor shift, int64_t crop);
void add_image_stats(torch::Tensor image, torch::Tensor image_sum, torch::Tensor pixel_sum,
                     torch::Tensor pixel_outer);
torch::Tensor lrn_forward(torch::Tensor x, double alpha, double beta, double k, int64_t size, int64_t towers,
                          bool relu);
torch::Tensor lrn_backward(torch::Tensor x, torch::Tensor g, double alpha, double beta, double k, int64_t size,
                           int64_t towers, bool relu);
std::string lrn_vector_isa();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("crop_normalize", &crop_normalize);
  m.def("add_image_stats", &add_image_stats);
  m.def("lrn_forward", &lrn_forward);
  m.def("lrn_backward", &lrn_backward);
  m.def("lrn_vector_isa", &lrn_vector_isa);
}
