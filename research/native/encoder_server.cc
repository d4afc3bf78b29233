// Decision 0036's probe: a C++ gRPC server for tierwise.v1.ClassifierService whose Classify runs the real int8
// encoder (onnxruntime's C++ API, the Python wheel's own libonnxruntime) and the default head in its handler
// thread. Texts are looked up in a table of token ids the Python probe wrote with the product's tokenizer, so it
// measures a native server with the real model, less the tokenizer; it is not a product classifier.
//
//   encoder_server MODEL.onnx TOKENS.bin HEAD.bin
//
// TOKENS.bin: repeated (u32 text bytes, text, u32 n, n x i64 ids). HEAD.bin: u32 d, u32 k, coef 3*d f32,
// intercept 3 f32, relative_cost 3 f32, tradeoff f32, unit centroids k*d f32, bars k f32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <onnxruntime_cxx_api.h>

#include "serve.h"
#include "tierwise/v1/classifier.grpc.pb.h"

namespace {

template <typename T>
T take(std::ifstream& in) {
  T value;
  if (!in.read(reinterpret_cast<char*>(&value), sizeof(T))) throw std::runtime_error("short file");
  return value;
}

template <typename T>
std::vector<T> take_n(std::ifstream& in, size_t n) {
  std::vector<T> values(n);
  if (n && !in.read(reinterpret_cast<char*>(values.data()), n * sizeof(T))) throw std::runtime_error("short file");
  return values;
}

std::unordered_map<std::string, std::vector<int64_t>> read_tokens(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::unordered_map<std::string, std::vector<int64_t>> table;
  while (in.peek() != EOF) {
    auto size = take<uint32_t>(in);
    std::string text(size, '\0');
    if (size && !in.read(text.data(), size)) throw std::runtime_error("short tokens file");
    auto n = take<uint32_t>(in);
    table[text] = take_n<int64_t>(in, n);
  }
  return table;
}

struct Head {
  uint32_t d = 0, k = 0;
  std::vector<float> coef, intercept, cost, centroids, bars;
  float tradeoff = 0;

  explicit Head(const char* path) {
    std::ifstream in(path, std::ios::binary);
    d = take<uint32_t>(in);
    k = take<uint32_t>(in);
    coef = take_n<float>(in, 3 * d);
    intercept = take_n<float>(in, 3);
    cost = take_n<float>(in, 3);
    tradeoff = take<float>(in);
    centroids = take_n<float>(in, size_t(k) * d);
    bars = take_n<float>(in, k);
  }
};

float dot(const float* a, const float* b, uint32_t n) {
  float sum = 0;
  for (uint32_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

class EncoderService final : public tierwise::v1::ClassifierService::Service {
 public:
  EncoderService(const char* model, const char* tokens, const char* head)
      : env_(ORT_LOGGING_LEVEL_WARNING, "d0036"), tokens_(read_tokens(tokens)), head_(head),
        memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    // The options classifier_service/encoder.py gives its session.
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);
    options.SetInterOpNumThreads(1);
    options.SetExecutionMode(ORT_SEQUENTIAL);
    options.SetGraphOptimizationLevel(ORT_ENABLE_ALL);
    options.AddConfigEntry("session.intra_op.allow_spinning", "0");
    options.AddConfigEntry("session.inter_op.allow_spinning", "0");
    session_ = std::make_unique<Ort::Session>(env_, model, options);
  }

  grpc::Status Classify(grpc::ServerContext*, const tierwise::v1::ClassifyRequest* request,
                        tierwise::v1::ClassifyResponse* reply) override {
    auto found = tokens_.find(request->text());
    if (found == tokens_.end()) return {grpc::StatusCode::INVALID_ARGUMENT, "text: not in the probe's table"};
    const std::vector<int64_t>& ids = found->second;
    std::vector<int64_t> mask(ids.size(), 1);
    const int64_t shape[2] = {1, static_cast<int64_t>(ids.size())};
    Ort::Value inputs[2] = {
        Ort::Value::CreateTensor<int64_t>(memory_, const_cast<int64_t*>(ids.data()), ids.size(), shape, 2),
        Ort::Value::CreateTensor<int64_t>(memory_, mask.data(), mask.size(), shape, 2)};
    static const char* input_names[2] = {"input_ids", "attention_mask"};
    static const char* output_names[1] = {"sentence_embedding"};
    auto outputs = session_->Run(Ort::RunOptions{nullptr}, input_names, inputs, 2, output_names, 1);
    const float* raw = outputs[0].GetTensorData<float>();
    std::vector<float> x(raw, raw + head_.d);
    float norm = std::sqrt(dot(x.data(), x.data(), head_.d));
    for (float& v : x) v /= std::max(norm, 1e-12f);

    float best = -1e30f;
    int tier = 1;
    for (int t = 0; t < 3; ++t) {
      float z = std::clamp(dot(x.data(), &head_.coef[size_t(t) * head_.d], head_.d) + head_.intercept[t], -40.f, 40.f);
      float p = 1.f / (1.f + std::exp(-z));
      reply->add_probabilities(p);
      if (p - head_.tradeoff * head_.cost[t] > best) best = p - head_.tradeoff * head_.cost[t], tier = t + 1;
    }
    float margin = -1e30f;
    for (uint32_t c = 0; c < head_.k; ++c)
      margin = std::max(margin, dot(x.data(), &head_.centroids[size_t(c) * head_.d], head_.d) - head_.bars[c]);
    if (margin < 0) tier = 3;
    reply->set_tier(tier);
    reply->set_confidence(reply->probabilities(tier - 1));
    reply->set_input_tokens(static_cast<int32_t>(ids.size()));
    reply->set_support_margin(margin);
    reply->set_outside_support(margin < 0);
    return grpc::Status::OK;
  }

 private:
  Ort::Env env_;
  std::unordered_map<std::string, std::vector<int64_t>> tokens_;
  Head head_;
  Ort::MemoryInfo memory_;
  std::unique_ptr<Ort::Session> session_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: encoder_server MODEL.onnx TOKENS.bin HEAD.bin" << std::endl;
    return 2;
  }
  EncoderService service(argv[1], argv[2], argv[3]);
  return serve(service);
}
