//! C libraries loaded at run time, not linked: speexdsp (echo
//! cancellation), libpulse-simple (the `pulse:` microphone) and TensorFlow
//! Lite (the wake word models). A machine without one still runs; only the
//! part that needs it fails, with a message naming the library.

use libloading::Library;

/// The function `name` (NUL-terminated) of `lib`, or "it has no NAME".
///
/// # Safety
///
/// `T` must be the function pointer type of the library's declaration of
/// `name`.
pub unsafe fn function<T: Copy>(lib: &Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller names the symbol's type.
    match unsafe { lib.get::<T>(name) } {
        Ok(f) => Ok(*f),
        Err(_) => Err(format!(
            "it has no {}",
            String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_that_is_not_there_is_named() {
        // SAFETY: the C library has no initialisers with preconditions.
        let libc = unsafe { Library::new("libc.so.6") }.expect("libc");
        // SAFETY: strlen's declaration.
        let strlen: unsafe extern "C" fn(*const std::ffi::c_char) -> usize =
            unsafe { function(&libc, b"strlen\0") }.expect("strlen");
        // SAFETY: a NUL-terminated string.
        assert_eq!(unsafe { strlen(c"four".as_ptr()) }, 4);
        // SAFETY: never called.
        let missing = unsafe { function::<unsafe extern "C" fn()>(&libc, b"no_such_fn\0") };
        assert_eq!(missing.err().as_deref(), Some("it has no no_such_fn"));
    }
}
