#!/bin/sh
# Build the libcuda.so.1 TEST STAND-IN and its caller into DIR (default: ./build).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build}
mkdir -p "$out"
cc -O1 -g -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$here/fake_libcuda.c"
cc -O1 -g -o "$out/caller" "$here/caller.c" -ldl
