// What the native probes share: serve one service on an ephemeral 127.0.0.1 port, print the port once listening
// (the probe reads it), and run until killed.
#pragma once

#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>

inline int serve(grpc::Service& service) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "cannot listen on 127.0.0.1" << std::endl;
    return 1;
  }
  std::cout << port << std::endl;
  server->Wait();
  return 0;
}
