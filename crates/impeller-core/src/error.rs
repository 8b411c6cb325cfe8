//! Errors of the core, with the fields a caller needs to say what went wrong and where.

/// Training could not produce a model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("the training data has {found} channels per frame but {expected} channels were named")]
    ChannelCount { expected: usize, found: usize },
    #[error("too few usable training frames: {usable} after warm-up and gaps, need at least {needed}")]
    TooFewRows { usable: usize, needed: usize },
    #[error("training produced a non-finite value in {what}; the training data may hold extreme values")]
    NonFinite { what: String },
    #[error("training produced an invalid model: {0}")]
    InvalidModel(ModelError),
}

/// A model file or value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model file is not valid JSON (line {line}, column {column}): {message}")]
    Syntax { line: usize, column: usize, message: String },
    #[error("model file does not match the model format (line {line}, column {column}): {message}")]
    Schema { line: usize, column: usize, message: String },
    #[error("not an impeller model: format is `{found}`, expected `{expected}`")]
    WrongFormat { found: String, expected: &'static str },
    #[error("model format version {found} is not supported; this build reads version {supported}")]
    UnsupportedVersion { found: u64, supported: u32 },
    #[error("invalid model: {field}: {message}")]
    Invalid { field: String, message: String },
}

impl ModelError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

/// Checks that every value is finite, naming the field otherwise.
pub(crate) fn check_finite<'a>(field: &str, values: impl IntoIterator<Item = &'a f64>) -> Result<(), ModelError> {
    for (i, v) in values.into_iter().enumerate() {
        if !v.is_finite() {
            return Err(ModelError::invalid(format!("{field}[{i}]"), "not a finite number"));
        }
    }
    Ok(())
}
