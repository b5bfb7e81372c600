// cuda_fp16.h for the host emulation (cuda_shim.h): __half as GCC's _Float16,
// whose conversions from float round to nearest even, like __float2half_rn.
#pragma once
struct __half { _Float16 v; };
struct alignas(4) __half2 { __half x, y; };
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline float2 __half22float2(__half2 h) { return {static_cast<float>(h.x.v), static_cast<float>(h.y.v)}; }
inline __half __float2half_rn(float f) { return {static_cast<_Float16>(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {{static_cast<_Float16>(a)}, {static_cast<_Float16>(b)}}; }
inline unsigned short __half_as_ushort(__half h) {
    unsigned short bits;
    __builtin_memcpy(&bits, &h.v, sizeof bits);
    return bits;
}
