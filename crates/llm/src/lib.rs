//! rustworthy language models. Today: [`gguf`], a reader of GGUF v3 checkpoints (the format
//! llama.cpp writes, and the one the offline SmolLM2-135M-Instruct ships in) that validates the
//! header, metadata and tensor index against the file's size and dequantizes F32, F16, BF16,
//! Q8_0, Q4_0 and Q4_1 tensors to float32, undoing llama.cpp's q/k row permutation on request.

#![warn(missing_docs)]

pub mod gguf;
