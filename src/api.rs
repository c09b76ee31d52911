//! Client APIs beside the chat handler, one module per API: each parses its requests into
//! what identify and decide need and renders answers and errors in its own shape.

pub mod ofrep;
