//! Kubernetes resource quantities, as far as the template node needs them: parse the forms the
//! API and the capacity annotations use (`2`, `500m`, `4096Mi`, `8G`, `1.5Gi`, `1e3`) into
//! milli-units, subtract reservations, and print a canonical string back.
//!
//! k8s-openapi's `Quantity` is a plain string; this is the arithmetic cluster-autoscaler does
//! with `resource.Quantity` on the Go side (apimachinery `pkg/api/resource`).

/// A quantity in thousandths of the base unit (millicores for CPU, milli-bytes for memory), so
/// that both `100m` CPU and `1Ki` bytes are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Milli(pub i128);

/// A quantity string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity")]
pub struct ParseError(pub String);

/// Parses a quantity (`<number><suffix>`; suffixes `m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki`,
/// `Mi`, `Gi`, `Ti`, `Pi`, `Ei`, or a decimal exponent `e<n>`/`E<n>`).
///
/// # Errors
/// [`ParseError`] for anything else, and for negative values.
pub fn parse(s: &str) -> Result<Milli, ParseError> {
    let err = || ParseError(s.to_owned());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    // Exact decimal: integer part and up to 9 fractional digits, as 10^-9 units.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.len() > 9 || (int.is_empty() && frac.is_empty()) {
        return Err(err());
    }
    let int: i128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let frac_n: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| err())?
    };
    let nano = int
        .checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(frac_n))
        .ok_or_else(err)?;
    // Multiplier as (numerator, denominator) over the base unit.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().map_err(|_| err())?;
            (10i128.checked_pow(exp).ok_or_else(err)?, 1)
        }
        _ => return Err(err()),
    };
    // nano * mul / div / 10^6 = milli
    let milli = nano.checked_mul(mul).ok_or_else(err)? / div / 1_000_000;
    Ok(Milli(milli))
}

/// Formats CPU: whole cores as `4`, else millicores as `3900m`.
pub fn format_cpu(q: Milli) -> String {
    let v = q.0.max(0);
    if v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly (`3996Mi`, `7Gi`,
/// `123456789`), rounding sub-byte remainders down.
pub fn format_bytes(q: Milli) -> String {
    let bytes = (q.0 / 1000).max(0);
    for (suffix, unit) in [
        ("Ei", 1i128 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Formats a count (pods, GPUs): the integer part.
pub fn format_count(q: Milli) -> String {
    (q.0.max(0) / 1000).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse("2").unwrap(), Milli(2000));
        assert_eq!(parse("500m").unwrap(), Milli(500));
        assert_eq!(parse("0.5").unwrap(), Milli(500));
        assert_eq!(parse("4096Mi").unwrap(), Milli(4096 * (1 << 20) * 1000));
        assert_eq!(parse("8G").unwrap(), Milli(8_000_000_000_000));
        assert_eq!(parse("1.5Gi").unwrap(), Milli(3 * (1 << 29) * 1000));
        assert_eq!(parse("1e3").unwrap(), Milli(1_000_000));
        assert_eq!(parse(" 110 ").unwrap(), Milli(110_000));
        for bad in ["", "abc", "-1", "1.2.3", "5Xi", "1.0000000001"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_cpu(Milli(4000)), "4");
        assert_eq!(format_cpu(Milli(3900)), "3900m");
        assert_eq!(format_bytes(parse("4096Mi").unwrap()), "4Gi");
        assert_eq!(
            format_bytes(Milli(
                parse("4096Mi").unwrap().0 - parse("100Mi").unwrap().0
            )),
            "3996Mi"
        );
        assert_eq!(format_bytes(Milli(1_000_001_000)), "1000001");
        assert_eq!(format_count(parse("110").unwrap()), "110");
        assert_eq!(format_bytes(Milli(-5)), "0");
    }
}
