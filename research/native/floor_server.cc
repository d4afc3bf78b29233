// Decision 0029's probe: a C++ gRPC server for tierwise.v1.ClassifierService whose Classify keeps its handler
// thread busy for --busy-us microseconds (as an encoder run would) and answers an empty reply. It measures what a
// native server's floor would be under the same Python client the bench uses; it is not a classifier.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "serve.h"
#include "tierwise/v1/classifier.grpc.pb.h"

namespace {

class Floor final : public tierwise::v1::ClassifierService::Service {
 public:
  explicit Floor(long busy_us) : busy_(busy_us) {}

  grpc::Status Classify(grpc::ServerContext*, const tierwise::v1::ClassifyRequest*,
                        tierwise::v1::ClassifyResponse*) override {
    const auto until = std::chrono::steady_clock::now() + busy_;
    while (std::chrono::steady_clock::now() < until) {
    }
    return grpc::Status::OK;
  }

 private:
  std::chrono::microseconds busy_;
};

}  // namespace

int main(int argc, char** argv) {
  long busy_us = argc > 1 ? std::atol(argv[1]) : 0;
  Floor service(busy_us);
  return serve(service);
}
