//! Validation of extension attribute names.

use crate::ExtensionNameError;

/// The longest extension attribute name this crate accepts, in characters.
///
/// CloudEvents 1.0 says names should not be longer; this crate treats the
/// recommendation as a rule so that events stay portable.
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// The context attributes CloudEvents 1.0 defines, plus the `data` member of
/// the JSON format. None of them may be used as an extension name.
pub const RESERVED_NAMES: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
];

/// Checks that `name` may be used as a CloudEvents 1.0 extension attribute.
///
/// A valid name is 1 to [`MAX_EXTENSION_NAME_LEN`] characters from `a`-`z`
/// and `0`-`9` and is not one of [`RESERVED_NAMES`].
///
/// ```
/// use postoffice_cloudevents::{ExtensionNameError, validate_extension_name};
///
/// assert!(validate_extension_name("tenantid").is_ok());
/// assert!(matches!(
///     validate_extension_name("tenant_id"),
///     Err(ExtensionNameError::InvalidCharacter { character: '_', .. })
/// ));
/// ```
///
/// # Errors
///
/// An [`ExtensionNameError`] that names the refused attribute and says which
/// rule it breaks.
pub fn validate_extension_name(name: &str) -> Result<(), ExtensionNameError> {
    if name.is_empty() {
        return Err(ExtensionNameError::Empty);
    }

    if let Some(character) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9')) {
        return Err(ExtensionNameError::InvalidCharacter {
            name: name.to_owned(),
            character,
        });
    }

    // Only ASCII is left, so bytes are characters.
    if name.len() > MAX_EXTENSION_NAME_LEN {
        return Err(ExtensionNameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }

    if RESERVED_NAMES.contains(&name) {
        return Err(ExtensionNameError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_letters_and_digits() {
        for name in [
            "a",
            "tenant",
            "traceparent",
            "partitionkey",
            "x1",
            "0",
            "abcdefghij0123456789",
        ] {
            assert_eq!(validate_extension_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_each_broken_rule_by_name() {
        assert_eq!(validate_extension_name(""), Err(ExtensionNameError::Empty));
        let cases = [
            ("Tenant", 'T'),
            ("tenant-id", '-'),
            ("tenant_id", '_'),
            ("größe", 'ö'),
            ("a b", ' '),
        ];
        for (name, character) in cases {
            assert_eq!(
                validate_extension_name(name),
                Err(ExtensionNameError::InvalidCharacter {
                    name: name.to_owned(),
                    character
                }),
            );
        }
        assert_eq!(
            validate_extension_name("abcdefghij0123456789x"),
            Err(ExtensionNameError::TooLong {
                name: "abcdefghij0123456789x".to_owned(),
                len: 21
            }),
        );
        for name in RESERVED_NAMES {
            assert_eq!(
                validate_extension_name(name),
                Err(ExtensionNameError::Reserved {
                    name: name.to_owned()
                }),
            );
        }
    }

    #[test]
    fn error_messages_name_the_attribute() {
        let error = validate_extension_name("tenant_id").unwrap_err();
        assert_eq!(
            error.to_string(),
            "extension attribute name \"tenant_id\" has the invalid character '_'"
        );
    }
}
