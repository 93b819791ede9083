//! TensorFlow Lite's C API, loaded at run time from `libtensorflowlite_c.so`
//! (the one the `pymicro-wakeword` wheel ships, unpacked by
//! `scripts/setup-wake.sh`). Loading it instead of linking keeps 4.8 MB of
//! native code out of the binary and off every install that has no wake
//! word; a missing or wrong library is an error that names the file.
//!
//! Only what a streaming int8 model needs: load, allocate, copy in, invoke,
//! copy out, with the tensors' shapes and quantization.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest model file accepted (the shipped ones are 50–80 KB).
pub const MAX_MODEL_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TfliteError {
    #[error(
        "cannot load TensorFlow Lite from {}: {cause} (install it with scripts/setup-wake.sh, or set engines.NAME.library)",
        path.display()
    )]
    Library { path: PathBuf, cause: String },
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
}

type Status = c_int;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct QuantParams {
    scale: f32,
    zero_point: i32,
}

/// The C functions used, resolved once.
struct Api {
    version: unsafe extern "C" fn() -> *const c_char,
    model_create: unsafe extern "C" fn(*const c_void, usize) -> *mut c_void,
    model_delete: unsafe extern "C" fn(*mut c_void),
    options_create: unsafe extern "C" fn() -> *mut c_void,
    options_threads: unsafe extern "C" fn(*mut c_void, i32),
    options_delete: unsafe extern "C" fn(*mut c_void),
    interpreter_create: unsafe extern "C" fn(*const c_void, *const c_void) -> *mut c_void,
    interpreter_delete: unsafe extern "C" fn(*mut c_void),
    allocate: unsafe extern "C" fn(*mut c_void) -> Status,
    invoke: unsafe extern "C" fn(*mut c_void) -> Status,
    input: unsafe extern "C" fn(*const c_void, i32) -> *mut c_void,
    output: unsafe extern "C" fn(*const c_void, i32) -> *const c_void,
    tensor_type: unsafe extern "C" fn(*const c_void) -> c_int,
    num_dims: unsafe extern "C" fn(*const c_void) -> i32,
    dim: unsafe extern "C" fn(*const c_void, i32) -> i32,
    byte_size: unsafe extern "C" fn(*const c_void) -> usize,
    quant: unsafe extern "C" fn(*const c_void) -> QuantParams,
    copy_from: unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> Status,
    copy_to: unsafe extern "C" fn(*const c_void, *mut c_void, usize) -> Status,
}

/// A loaded `libtensorflowlite_c`.
pub struct Library {
    api: Api,
    path: PathBuf,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Library({})", self.path.display())
    }
}

impl Library {
    pub fn load(path: &Path) -> Result<Arc<Library>, TfliteError> {
        let err = |cause: String| TfliteError::Library {
            path: path.to_path_buf(),
            cause,
        };
        // SAFETY: loading runs the library's initialisers; this is the
        // TensorFlow Lite C library the setup script unpacked.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the C API's declaration.
                *unsafe { lib.get($name) }.map_err(|_| {
                    err(format!(
                        "it has no {} (not TensorFlow Lite's C library?)",
                        String::from_utf8_lossy(&$name[..$name.len() - 1])
                    ))
                })?
            };
        }
        let api = Api {
            version: sym!(b"TfLiteVersion\0"),
            model_create: sym!(b"TfLiteModelCreate\0"),
            model_delete: sym!(b"TfLiteModelDelete\0"),
            options_create: sym!(b"TfLiteInterpreterOptionsCreate\0"),
            options_threads: sym!(b"TfLiteInterpreterOptionsSetNumThreads\0"),
            options_delete: sym!(b"TfLiteInterpreterOptionsDelete\0"),
            interpreter_create: sym!(b"TfLiteInterpreterCreate\0"),
            interpreter_delete: sym!(b"TfLiteInterpreterDelete\0"),
            allocate: sym!(b"TfLiteInterpreterAllocateTensors\0"),
            invoke: sym!(b"TfLiteInterpreterInvoke\0"),
            input: sym!(b"TfLiteInterpreterGetInputTensor\0"),
            output: sym!(b"TfLiteInterpreterGetOutputTensor\0"),
            tensor_type: sym!(b"TfLiteTensorType\0"),
            num_dims: sym!(b"TfLiteTensorNumDims\0"),
            dim: sym!(b"TfLiteTensorDim\0"),
            byte_size: sym!(b"TfLiteTensorByteSize\0"),
            quant: sym!(b"TfLiteTensorQuantizationParams\0"),
            copy_from: sym!(b"TfLiteTensorCopyFromBuffer\0"),
            copy_to: sym!(b"TfLiteTensorCopyToBuffer\0"),
        };
        Ok(Arc::new(Library {
            api,
            path: path.to_path_buf(),
            _lib: lib,
        }))
    }

    /// The library's version string (e.g. "2.17.1").
    pub fn version(&self) -> String {
        // SAFETY: returns a static NUL-terminated string.
        unsafe { CStr::from_ptr((self.api.version)()) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// kTfLiteInt8 / kTfLiteUInt8 in the C API's type enum.
const INT8: c_int = 9;
const UINT8: c_int = 3;

/// One int8 streaming model with its interpreter (its state persists
/// between invocations). Not shared between threads; movable.
pub struct Model {
    lib: Arc<Library>,
    path: PathBuf,
    /// The model's bytes: TensorFlow Lite reads them in place for the
    /// model's whole life.
    _bytes: Vec<u8>,
    model: *mut c_void,
    interpreter: *mut c_void,
    input: *mut c_void,
    output: *const c_void,
    /// Input shape [1, stride, features].
    pub stride: usize,
    pub features: usize,
    in_scale: f32,
    in_zero: i32,
    in_unsigned: bool,
    out_scale: f32,
    out_zero: i32,
    out_unsigned: bool,
    quantized: Vec<u8>,
}

// SAFETY: the interpreter is only ever used through `&mut self`, by one
// thread at a time; TensorFlow Lite keeps no thread-local state for it.
unsafe impl Send for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: created by this library, deleted once, interpreter first.
        unsafe {
            (self.lib.api.interpreter_delete)(self.interpreter);
            (self.lib.api.model_delete)(self.model);
        }
    }
}

impl Model {
    /// Loads a model file (size checked first) and prepares it.
    pub fn load(lib: &Arc<Library>, path: &Path) -> Result<Model, TfliteError> {
        let err = |message: String| TfliteError::Model {
            path: path.to_path_buf(),
            message,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read: {e}")))?
            .len();
        if len > MAX_MODEL_BYTES {
            return Err(err(format!(
                "{len} bytes is larger than a wake word model can be ({MAX_MODEL_BYTES} bytes)"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if bytes.len() < 8 || &bytes[4..8] != b"TFL3" {
            return Err(err("not a TensorFlow Lite model (no TFL3 mark)".into()));
        }
        let api = &lib.api;
        // SAFETY: the C API is used as documented; every pointer is checked
        // for null before use and the bytes outlive the model.
        unsafe {
            let model = (api.model_create)(bytes.as_ptr().cast(), bytes.len());
            if model.is_null() {
                return Err(err("TensorFlow Lite cannot read this model".into()));
            }
            let opts = (api.options_create)();
            if !opts.is_null() {
                (api.options_threads)(opts, 1);
            }
            let interpreter = (api.interpreter_create)(model, opts);
            if !opts.is_null() {
                (api.options_delete)(opts);
            }
            if interpreter.is_null() {
                (api.model_delete)(model);
                return Err(err("TensorFlow Lite cannot build an interpreter for this model (an operation it lacks?)".into()));
            }
            let mut m = Model {
                lib: lib.clone(),
                path: path.to_path_buf(),
                _bytes: bytes,
                model,
                interpreter,
                input: std::ptr::null_mut(),
                output: std::ptr::null(),
                stride: 0,
                features: 0,
                in_scale: 1.0,
                in_zero: 0,
                in_unsigned: false,
                out_scale: 1.0,
                out_zero: 0,
                out_unsigned: false,
                quantized: Vec::new(),
            };
            if (api.allocate)(interpreter) != 0 {
                return Err(err("cannot allocate the model's tensors".into()));
            }
            m.input = (api.input)(interpreter, 0);
            m.output = (api.output)(interpreter, 0);
            if m.input.is_null() || m.output.is_null() {
                return Err(err("the model has no input or output tensor".into()));
            }
            let (it, ot) = ((api.tensor_type)(m.input), (api.tensor_type)(m.output));
            if !matches!(it, INT8 | UINT8) || !matches!(ot, INT8 | UINT8) {
                return Err(err(format!(
                    "tensors of type {it}/{ot}; a microWakeWord model is quantized to 8 bits"
                )));
            }
            m.in_unsigned = it == UINT8;
            m.out_unsigned = ot == UINT8;
            if (api.num_dims)(m.input) != 3 {
                return Err(err("the input is not [1, stride, features]".into()));
            }
            m.stride = (api.dim)(m.input, 1).max(0) as usize;
            m.features = (api.dim)(m.input, 2).max(0) as usize;
            let size = (api.byte_size)(m.input);
            if m.stride == 0 || m.features == 0 || size != m.stride * m.features {
                return Err(err(format!(
                    "input of {size} bytes for {}x{} features",
                    m.stride, m.features
                )));
            }
            if (api.byte_size)(m.output) != 1 {
                return Err(err("the output is not one probability".into()));
            }
            let (iq, oq) = ((api.quant)(m.input), (api.quant)(m.output));
            if iq.scale <= 0.0 || oq.scale <= 0.0 {
                return Err(err("the model is not quantized".into()));
            }
            (m.in_scale, m.in_zero) = (iq.scale, iq.zero_point);
            (m.out_scale, m.out_zero) = (oq.scale, oq.zero_point);
            m.quantized = vec![0; size];
            Ok(m)
        }
    }

    /// Runs the model on `stride` feature rows (each `features` long, in
    /// the models' float scale); returns the probability.
    pub fn run(&mut self, rows: &[f32]) -> Result<f32, TfliteError> {
        if rows.len() != self.quantized.len() {
            return Err(TfliteError::Model {
                path: self.path.clone(),
                message: format!(
                    "given {} features, takes {}",
                    rows.len(),
                    self.quantized.len()
                ),
            });
        }
        for (q, f) in self.quantized.iter_mut().zip(rows) {
            let v = (f / self.in_scale + self.in_zero as f32).round();
            *q = if self.in_unsigned {
                v.clamp(0.0, 255.0) as u8
            } else {
                v.clamp(-128.0, 127.0) as i8 as u8
            };
        }
        let api = &self.lib.api;
        let mut out = [0u8; 1];
        // SAFETY: buffer sizes were checked against the tensors at load.
        let ok = unsafe {
            (api.copy_from)(
                self.input,
                self.quantized.as_ptr().cast(),
                self.quantized.len(),
            ) == 0
                && (api.invoke)(self.interpreter) == 0
                && (api.copy_to)(self.output, out.as_mut_ptr().cast(), 1) == 0
        };
        if !ok {
            return Err(TfliteError::Model {
                path: self.path.clone(),
                message: "inference failed".into(),
            });
        }
        let raw = if self.out_unsigned {
            out[0] as f32
        } else {
            out[0] as i8 as f32
        };
        Ok((raw - self.out_zero as f32) * self.out_scale)
    }
}
