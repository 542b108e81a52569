// Runs one kernel of kernels/*.cu on the CPU emulation (cuda_emulator.hpp), for the kernel logic tests in
// tests/python/test_cuda_kernels_emulated.py, which build this file with g++ and check the outputs with NumPy.
//
//   run_kernel DIR
//
// DIR/launch.txt, one item per line:
//   kernel NAME                       conv3x3_* (also the *_rgb last layers) | conv_finish_f32 | dense_f32 | torgb_f32
//   grid X Y Z
//   threads T
//   shared BYTES                      dynamic shared memory
//   ints I0 I1 ...                    the integer arguments in order (for conv3x3_*: the ConvShape fields)
//   buffers K                         pointer arguments, in order: DIR/arg0.bin .. arg{K-1}.bin (raw 4-byte words)
// Every buffer is written back to DIR/arg{i}.out after the run.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include "cuda_emulator.hpp"

namespace emu {
// The convolution entry points by name: conv (in, w, bias, out, shape) and the last layers with ToRGB fused
// (in, w, bias, rgb_w, rgb_b, img, packed, shape).
inline std::map<std::string, void*>& conv_entries() {
    static std::map<std::string, void*> entries;
    return entries;
}
inline std::map<std::string, void*>& rgb_entries() {
    static std::map<std::string, void*> entries;
    return entries;
}
inline bool register_entry(std::map<std::string, void*>& entries, const char* name, void* fn) {
    entries[name] = fn;
    return true;
}
}  // namespace emu
#define REGISTER_CONV_ENTRY(NAME) \
    static const bool NAME##_registered = emu::register_entry(emu::conv_entries(), #NAME, (void*)&NAME);
#define REGISTER_RGB_ENTRY(NAME) \
    static const bool NAME##_registered = emu::register_entry(emu::rgb_entries(), #NAME, (void*)&NAME);

#include "../../kernels/common.cuh"
#include "../../kernels/dense.cu"
#include "../../kernels/conv_common.cuh"
#include "../../kernels/conv_gather.cu"
#include "../../kernels/conv_pipelined.cu"
#include "../../kernels/conv_spatial.cu"
#include "../../kernels/conv_finish.cu"
#include "../../kernels/torgb.cu"

static std::vector<unsigned int> read_words(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot read " + path);
    const std::streamsize bytes = f.tellg();
    std::vector<unsigned int> words((size_t)bytes / 4);  // exact: the tests build with AddressSanitizer
    f.seekg(0);
    f.read(reinterpret_cast<char*>(words.data()), bytes);
    return words;
}

// The ConvShape fields in order (the caller checked there are 12).
static ConvShape conv_shape(const std::vector<int>& v) {
    return ConvShape{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: run_kernel DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    std::ifstream spec(dir + "/launch.txt");
    if (!spec) {
        std::cerr << "cannot read " << dir << "/launch.txt\n";
        return 2;
    }
    std::string name, line;
    EmuDim3 grid;
    unsigned int threads = 0;
    size_t shared = 0;
    std::vector<int> ints;
    int n_buffers = 0;
    while (std::getline(spec, line)) {
        std::istringstream in(line);
        std::string key;
        in >> key;
        if (key == "kernel") in >> name;
        else if (key == "grid") in >> grid.x >> grid.y >> grid.z;
        else if (key == "threads") in >> threads;
        else if (key == "shared") in >> shared;
        else if (key == "ints") for (int v; in >> v;) ints.push_back(v);
        else if (key == "buffers") in >> n_buffers;
        else if (!key.empty()) {
            std::cerr << "launch.txt: unknown key '" << key << "'\n";
            return 2;
        }
    }
    std::vector<std::vector<unsigned int>> bufs;
    for (int i = 0; i < n_buffers; ++i) bufs.push_back(read_words(dir + "/arg" + std::to_string(i) + ".bin"));
    auto f = [&](int i) { return reinterpret_cast<float*>(bufs.at(i).data()); };
    auto need = [&](size_t n_ints, int n_bufs) {
        if (ints.size() != n_ints || n_buffers != n_bufs) {
            std::cerr << name << " takes " << n_ints << " ints and " << n_bufs << " buffers\n";
            std::exit(2);
        }
    };

    if (auto it = emu::conv_entries().find(name); it != emu::conv_entries().end()) {
        need(12, 4);
        const ConvShape s = conv_shape(ints);
        using ConvFn = void (*)(const float*, const float*, const float*, float*, ConvShape);
        emu::launch(reinterpret_cast<ConvFn>(it->second), grid, threads, shared, (const float*)f(0),
                    (const float*)f(1), (const float*)f(2), f(3), s);
    } else if (auto it = emu::rgb_entries().find(name); it != emu::rgb_entries().end()) {
        need(12, 7);
        const ConvShape s = conv_shape(ints);
        using RgbFn = void (*)(const float*, const float*, const float*, const float*, const float*, float*,
                               unsigned int*, ConvShape);
        emu::launch(reinterpret_cast<RgbFn>(it->second), grid, threads, shared, (const float*)f(0),
                    (const float*)f(1), (const float*)f(2), (const float*)f(3), (const float*)f(4), f(5),
                    reinterpret_cast<unsigned int*>(f(6)), s);
    } else if (name == "conv_finish_f32") {
        need(3, 3);
        emu::launch(conv_finish_f32, grid, threads, shared, (const float*)f(0), (const float*)f(1), f(2), ints[0],
                    ints[1], ints[2]);
    } else if (name == "dense_f32") {
        need(2, 3);
        emu::launch(dense_f32, grid, threads, shared, (const float*)f(0), (const float*)f(1), f(2), ints[0],
                    ints[1]);
    } else if (name == "torgb_f32") {
        need(3, 5);
        emu::launch(torgb_f32, grid, threads, shared, (const float*)f(0), (const float*)f(1), (const float*)f(2),
                    f(3), reinterpret_cast<unsigned int*>(f(4)), ints[0], ints[1], ints[2]);
    } else {
        std::cerr << "unknown kernel '" << name << "'\n";
        return 2;
    }

    for (int i = 0; i < n_buffers; ++i) {
        std::ofstream out(dir + "/arg" + std::to_string(i) + ".out", std::ios::binary);
        out.write(reinterpret_cast<const char*>(bufs[i].data()), (std::streamsize)(bufs[i].size() * 4));
    }
    return 0;
}
