//! The C API of `src/shim/dist.cpp` (errors come back as malloc'd strings).
use std::ffi::{c_char, c_int, c_long, c_void};

extern "C" {
    pub fn advtrain_dist_has_nccl() -> c_int;
    pub fn advtrain_dist_free_error(err: *mut c_char);
    pub fn advtrain_dist_init(
        backend: c_int,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        server: c_int,
        timeout_ms: c_long,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    pub fn advtrain_dist_free(g: *mut c_void);
    pub fn advtrain_dist_allreduce_sum(
        g: *mut c_void,
        t: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn advtrain_dist_broadcast(
        g: *mut c_void,
        t: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn advtrain_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub fn advtrain_dist_sync_error(g: *mut c_void, clear: c_int) -> *mut c_char;
    pub fn advtrain_dist_sync_moments(
        g: *mut c_void,
        x: *mut c_void,
        summed: c_int,
        mean: *mut *mut c_void,
        var: *mut *mut c_void,
        count: *mut f64,
        err: *mut *mut c_char,
    ) -> c_int;
}
