//! Small closed vocabularies shared by devices, rules, backends and metrics.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// `a|b|c`, for error messages.
            pub fn choices() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join("|")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("{} must be one of {}", $what, Self::choices())),
                }
            }
        }
    };
}

closed_enum!(
    /// How the button was pressed.
    Gesture, "gesture", {
        Single => "single",
        Double => "double",
        Triple => "triple",
        Long => "long",
    }
);

closed_enum!(
    /// What a request asks for.
    Service, "service", {
        Rescue => "rescue",
        Taxi => "taxi",
        Hospital => "hospital",
        WelfareCheck => "welfare_check",
        Maintenance => "maintenance",
    }
);

closed_enum!(
    /// How urgent a request is.
    Priority, "priority", {
        Emergency => "emergency",
        Urgent => "urgent",
        Routine => "routine",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        for g in Gesture::ALL {
            assert_eq!(g.as_str().parse::<Gesture>().unwrap(), *g);
        }
        assert_eq!(
            "tap".parse::<Gesture>().unwrap_err(),
            "gesture must be one of single|double|triple|long"
        );
        assert_eq!(
            "welfare_check".parse::<Service>().unwrap(),
            Service::WelfareCheck
        );
        assert!(
            "Rescue".parse::<Service>().is_err(),
            "spelling is case-sensitive"
        );
        assert_eq!(
            serde_json::to_string(&Priority::Emergency).unwrap(),
            "\"emergency\""
        );
    }
}
