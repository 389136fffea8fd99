//! The ignite object model: `ignite.weave.works/v1alpha4` objects (VM, Image, Kernel,
//! Configuration), the value types inside them (sizes, image references, UIDs, names, port
//! mappings), decoding of v1alpha2/v1alpha3/v1alpha4 manifests in YAML or JSON, and validation
//! that names the offending field.
//!
//! This crate does no I/O: callers hand it bytes and get typed objects or typed errors.
#![forbid(unsafe_code)]

pub mod decode;
pub mod duration;
pub mod lifecycle;
pub mod meta;
pub mod names;
pub mod ports;
pub mod reference;
pub mod size;
pub mod types;
pub mod validate;

pub use decode::{decode_object, decode_objects, DecodeError, Object};
pub use lifecycle::{Ending, VmState};
pub use meta::{ObjectMeta, Uid, API_VERSION, GROUP};
pub use ports::{PortMapping, Protocol};
pub use reference::{ImageRef, RefError};
pub use size::{Size, SizeError};
pub use types::*;
pub use validate::{ValidationError, ValidationErrors};
