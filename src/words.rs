//! Enums that are stored and sent as fixed words (`pending`, `http-01`,
//! `dv`): one macro gives each its word table, parsing, display and serde,
//! so a status or kind is a type everywhere and a string only at the
//! edges (SQL columns, JSON, forms).

use std::fmt;

/// A word that names no variant of the enum it was read as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// What was being read (`challenge status`).
    pub what: &'static str,
    /// The word.
    pub word: String,
    /// The words that would have been accepted.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}; expected one of {}",
            self.what,
            self.word,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownWord {}

/// Declares an enum whose variants are words:
///
/// ```ignore
/// words! {
///     /// doc
///     pub enum ChallengeStatus("challenge status") {
///         /// doc
///         Pending = "pending",
///         Valid = "valid",
///     }
/// }
/// ```
///
/// It gets `ALL`, `WORDS`, `as_str`, `Display`, `FromStr` and
/// `TryFrom<String>` (erring with [`UnknownWord`]), is written to and read
/// from a text column by sqlx (so a `FromRow` record holds it, and a stored
/// word that names no variant is an error, not a default), and is its word
/// in serde.
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every word, in the same order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The word it is stored and sent as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::words::UnknownWord;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::words::UnknownWord {
                        what: $what,
                        word: s.to_owned(),
                        expected: Self::WORDS,
                    }),
                }
            }
        }

        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::words::UnknownWord;

            fn try_from(s: String) -> ::std::result::Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl<DB: ::sqlx::Database> ::sqlx::Type<DB> for $name
        where
            String: ::sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as ::sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as ::sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: ::sqlx::Database> ::sqlx::Decode<'r, DB> for $name
        where
            String: ::sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as ::sqlx::Database>::ValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                Ok(<String as ::sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }

        impl<'q, DB: ::sqlx::Database> ::sqlx::Encode<'q, DB> for $name
        where
            &'q str: ::sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as ::sqlx::Database>::ArgumentBuffer<'q>,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&'q str as ::sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let word = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                word.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use words;

#[cfg(test)]
mod tests {
    words! {
        /// A test enum.
        enum Light("light") {
            /// Stop.
            Red = "red",
            /// Go.
            Green = "green-ish",
        }
    }

    #[test]
    fn every_word_reads_back_as_its_variant_and_others_are_named_in_the_error() {
        for (v, w) in Light::ALL.iter().zip(Light::WORDS) {
            assert_eq!(v.as_str(), *w);
            assert_eq!(w.parse::<Light>(), Ok(*v));
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{w}\""));
            assert_eq!(
                serde_json::from_str::<Light>(&format!("\"{w}\"")).unwrap(),
                *v
            );
        }
        let err = "amber".parse::<Light>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown light \"amber\"; expected one of red, green-ish"
        );
        assert!(serde_json::from_str::<Light>("\"Red\"").is_err());
        assert_eq!(Light::try_from("red".to_owned()), Ok(Light::Red));
    }
}
