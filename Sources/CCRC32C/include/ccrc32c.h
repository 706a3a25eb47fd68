#ifndef TENANTD_CCRC32C_H
#define TENANTD_CCRC32C_H

#include <stddef.h>
#include <stdint.h>

/// 1 when the CPU has the SSE4.2 crc32 instruction (checked once), else 0.
int tenantd_crc32c_hardware_available(void);

/// CRC-32C of `length` bytes, continuing from `crc` (pre- and post-inverted by the caller),
/// with the SSE4.2 crc32 instruction. Call only when tenantd_crc32c_hardware_available().
uint32_t tenantd_crc32c_hardware(uint32_t crc, const void *bytes, size_t length);

#endif
