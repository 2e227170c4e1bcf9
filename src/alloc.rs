//! mimalloc as the global allocator, dispatching on the layout. Every mimalloc block is aligned
//! to at least a pointer's size (its bins are multiples of it), so a layout asking for no more
//! goes to plain `mi_malloc`; a larger alignment to `mi_malloc_aligned`. The `mimalloc` crate
//! sends everything to the latter, whose generic path over-allocates most sizes.
//!
//! The daemon's allocator (`src/main.rs`) and the ceilings' (`examples/`, which include this
//! file by path), so that a ceiling measures pingora's floor with the allocator the daemon has.
#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};

pub struct MiMalloc;

/// What every mimalloc block is aligned to.
const BLOCK_ALIGN: usize = std::mem::align_of::<usize>();

/// Whether a block of `size` bytes meets `align` whatever mimalloc returns.
fn plain(align: usize, size: usize) -> bool {
    align <= BLOCK_ALIGN && align <= size
}

// SAFETY: every function keeps GlobalAlloc's contract by passing the layout's size and,
// unless a plain block meets it (see `plain`), its alignment to mimalloc, whose functions
// return null on failure; `mi_free` and the `realloc`s take any pointer mimalloc returned.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, writable, and
    /// carried over whole by `realloc`, plain blocks and aligned ones alike.
    #[test]
    fn blocks_meet_their_layout() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 12, 24, 48, 100, 1000, 1500, 4000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: a non-zero size; each block is freed once, by this allocator.
                unsafe {
                    let zeroed = a.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align));
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    a.dealloc(zeroed, layout);
                    for new_size in [size * 3 + 5, size.div_ceil(2)] {
                        let p = a.alloc(layout);
                        assert!(
                            !p.is_null() && (p as usize).is_multiple_of(align),
                            "{size} at {align}"
                        );
                        std::ptr::write_bytes(p, 0xA5, size);
                        let q = a.realloc(p, layout, new_size);
                        assert!(
                            !q.is_null() && (q as usize).is_multiple_of(align),
                            "{new_size} at {align}"
                        );
                        let kept = std::slice::from_raw_parts(q, size.min(new_size));
                        assert!(kept.iter().all(|&b| b == 0xA5));
                        a.dealloc(q, Layout::from_size_align(new_size, align).expect("valid"));
                    }
                }
            }
        }
    }
}
