//! The little runtime a `no_std` component needs: a global allocator, the canonical ABI's
//! `cabi_realloc` export, `memcmp`, and a panic handler.

use core::alloc::{GlobalAlloc, Layout};

use crate::arena::Arena;

/// The instance's allocator: the bump [`Arena`] first, dlmalloc (which grows linear memory with
/// `memory.grow` and imports nothing) for what the arena cannot hold.
struct Allocator;

static ARENA: Arena = Arena::new();
static FALLBACK: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

// SAFETY: every block comes from the arena or from dlmalloc and goes back to the one it came
// from (`Arena::contains` tells them apart); a wasm instance runs on one thread.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` is the caller's, valid and non-zero-sized per `GlobalAlloc`.
        ARENA.alloc(layout).unwrap_or_else(|| unsafe { FALLBACK.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARENA.contains(ptr) {
            ARENA.free();
        } else {
            // SAFETY: not the arena's, so dlmalloc's, allocated with `layout`.
            unsafe { FALLBACK.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ARENA.contains(ptr) {
            // SAFETY: dlmalloc's block, as the caller describes it.
            return unsafe { FALLBACK.realloc(ptr, layout, new_size) };
        }
        if ARENA.resize_in_place(ptr, layout.size(), new_size) {
            return ptr;
        }
        // SAFETY: `new_size` with the old alignment is a valid layout per `GlobalAlloc::realloc`;
        // the old block holds `layout.size()` bytes and the new one at least `new_size`.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

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
