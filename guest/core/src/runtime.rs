//! The little runtime a `no_std` component needs: a global allocator, the canonical ABI's
//! `cabi_realloc` export, `memcmp`, and a panic handler.

use core::alloc::Layout;

// dlmalloc grows linear memory with `memory.grow` and imports nothing.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The canonical ABI allocates through this export when the host passes lists and strings in.
///
/// wit-bindgen 0.61 only defines it for `wasm32-wasip1` and `wasm32-unknown-unknown`: on `wasip2`
/// it expects wasi-libc's, which a `no_std` build does not link. Same contract as wit-bindgen's:
/// `old_len == 0` allocates, otherwise reallocates; zero-sized results get a dangling, aligned
/// pointer.
///
/// # Safety
/// Called by the host per the canonical ABI: `old_ptr`/`old_len`/`align` describe a live
/// allocation made here (or `old_len` is 0) and `align` is a power of two.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let (Ok(new_layout), Ok(old_layout)) =
        (Layout::from_size_align(new_len, align), Layout::from_size_align(old_len, align))
    else {
        core::arch::wasm32::unreachable()
    };
    // SAFETY: both layouts are valid and non-zero-sized where used; the caller vouches that
    // `old_ptr` was allocated here with `old_layout`.
    let ptr = unsafe {
        if old_len == 0 {
            alloc::alloc::alloc(new_layout)
        } else {
            alloc::alloc::realloc(old_ptr, old_layout, new_len)
        }
    };
    if ptr.is_null() {
        // Out of memory: trap, the host turns it into a 500.
        core::arch::wasm32::unreachable()
    }
    ptr
}

/// LLVM lowers slice and `str` comparisons to calls to `memcmp`, which on `wasm32-wasip2` comes from
/// wasi-libc and so is missing in a `no_std` build (`memcpy`, `memmove` and `memset` become
/// bulk-memory instructions and need no function). Same byte loop as `compiler_builtins`'.
///
/// # Safety
/// `a` and `b` are valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and the caller vouches for `n` readable bytes behind both pointers.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// A panic is a bug (the handler never panics on client input); trapping makes the host answer
/// 500 and log it. Formatting the message would pull in code for nobody to read.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
