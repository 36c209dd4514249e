//! A guard in front of candle's pickle reader for untrusted `.pth` / TorchScript files.
//!
//! candle's reader is a faithful pickle VM: a crafted `data.pkl` can make it clone memoised
//! objects into an exponentially large tree (a "memo-clone bomb"), or nest containers so deeply
//! that walking or dropping the tree overflows the stack. Before candle sees the bytes, this
//! module runs the same opcodes on a stack of *sizes* (how many objects an item holds, how
//! deep it nests) and rejects the file when the objects cloned out of the memo exceed a budget
//! linear in the file's size, or when nesting exceeds [`MAX_DEPTH`]. Opcodes it does not know
//! are left to candle (which rejects them).

/// Deepest nesting of containers accepted (real checkpoints nest a few levels, TorchScript
/// module trees a few dozen).
pub const MAX_DEPTH: u32 = 200;

#[derive(Clone, Copy, Debug)]
enum Item {
    Mark,
    Obj { size: u64, depth: u32 },
}

fn obj(size: u64, depth: u32) -> Item {
    Item::Obj { size, depth }
}

// Long because it is one interpreter loop over pickle opcodes (one match arm each) sharing the
// stack and the budget; split, each arm would need all of them.
/// Check `pkl` (the bytes of `data.pkl`); the error says what is wrong in one line.
pub fn check(pkl: &[u8]) -> Result<(), String> {
    let budget: u64 = 64 * pkl.len() as u64 + (1 << 20);
    let mut cloned: u64 = 0;
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: std::collections::HashMap<u32, (u64, u32)> = Default::default();
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = i
            .checked_add(n)
            .filter(|&e| e <= pkl.len())
            .ok_or("data.pkl ends inside an opcode")?;
        let s = &pkl[*i..end];
        *i = end;
        Ok(s)
    };
    let pop = |stack: &mut Vec<Item>| -> Result<(u64, u32), String> {
        match stack.pop() {
            Some(Item::Obj { size, depth }) => Ok((size, depth)),
            _ => Err("data.pkl: malformed (pop from an empty stack or a mark)".into()),
        }
    };
    // Items down to the last mark (removed), combined.
    let pop_mark = |stack: &mut Vec<Item>| -> Result<(u64, u32), String> {
        let (mut s, mut d) = (0u64, 0u32);
        loop {
            match stack.pop() {
                Some(Item::Mark) => return Ok((s, d)),
                Some(Item::Obj { size, depth }) => {
                    s = s.saturating_add(size);
                    d = d.max(depth);
                }
                None => return Err("data.pkl: malformed (no mark)".into()),
            }
        }
    };
    let grow_top = |stack: &mut Vec<Item>, s: u64, d: u32| -> Result<(), String> {
        match stack.last_mut() {
            Some(Item::Obj { size, depth }) => {
                *size = size.saturating_add(s);
                *depth = (*depth).max(d.saturating_add(1));
                Ok(())
            }
            _ => Err("data.pkl: malformed (nothing to add items to)".into()),
        }
    };
    while i < pkl.len() {
        let op = pkl[i];
        i += 1;
        match op {
            0x80 => {
                take(&mut i, 1)?;
            }
            b'c' => {
                for _ in 0..2 {
                    let rest = &pkl[i..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("data.pkl ends inside a GLOBAL")?;
                    i += n + 1;
                }
                stack.push(obj(1, 1));
            }
            b'q' => {
                let k = take(&mut i, 1)?[0] as u32;
                if let Some(Item::Obj { size, depth }) = stack.last() {
                    memo.insert(k, (*size, *depth));
                }
            }
            b'r' => {
                let b = take(&mut i, 4)?;
                let k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if let Some(Item::Obj { size, depth }) = stack.last() {
                    memo.insert(k, (*size, *depth));
                }
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    take(&mut i, 1)?[0] as u32
                } else {
                    let b = take(&mut i, 4)?;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
                let (s, d) = *memo.get(&k).ok_or("data.pkl: memo key not found")?;
                cloned = cloned.saturating_add(s);
                if cloned > budget {
                    return Err(format!(
                        "data.pkl copies more than {budget} objects out of its memo (a crafted file?); refusing to load it"
                    ));
                }
                stack.push(obj(s, d));
            }
            b')' | b'}' | b'd' | b']' | b'N' | 0x88 | 0x89 => stack.push(obj(1, 1)),
            b'(' => stack.push(Item::Mark),
            b'X' => {
                let b = take(&mut i, 4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                take(&mut i, n)?;
                stack.push(obj(1, 1));
            }
            b'J' => {
                take(&mut i, 4)?;
                stack.push(obj(1, 1));
            }
            b'K' => {
                take(&mut i, 1)?;
                stack.push(obj(1, 1));
            }
            b'M' => {
                take(&mut i, 2)?;
                stack.push(obj(1, 1));
            }
            b'G' => {
                take(&mut i, 8)?;
                stack.push(obj(1, 1));
            }
            0x8a => {
                let n = take(&mut i, 1)?[0] as usize;
                take(&mut i, n)?;
                stack.push(obj(1, 1));
            }
            b't' => {
                let (s, d) = pop_mark(&mut stack)?;
                stack.push(obj(s.saturating_add(1), d.saturating_add(1)));
            }
            0x85..=0x87 => {
                let k = (op - 0x84) as usize;
                let (mut s, mut d) = (1u64, 0u32);
                for _ in 0..k {
                    let (a, b) = pop(&mut stack)?;
                    s = s.saturating_add(a);
                    d = d.max(b);
                }
                stack.push(obj(s, d.saturating_add(1)));
            }
            b'Q' => {
                let (s, d) = pop(&mut stack)?;
                stack.push(obj(s.saturating_add(1), d.saturating_add(1)));
            }
            b'R' | 0x81 => {
                let (a, da) = pop(&mut stack)?;
                let (c, dc) = pop(&mut stack)?;
                stack.push(obj(
                    a.saturating_add(c).saturating_add(1),
                    da.max(dc).saturating_add(1),
                ));
            }
            b'b' => {
                let (a, da) = pop(&mut stack)?;
                grow_top(&mut stack, a, da)?;
            }
            b'a' => {
                let (a, da) = pop(&mut stack)?;
                grow_top(&mut stack, a, da)?;
            }
            b's' => {
                let (v, dv) = pop(&mut stack)?;
                let (k, dk) = pop(&mut stack)?;
                grow_top(&mut stack, k.saturating_add(v), dk.max(dv))?;
            }
            b'e' | b'u' => {
                let (s, d) = pop_mark(&mut stack)?;
                grow_top(&mut stack, s, d)?;
            }
            b'.' => return Ok(()),
            // Anything else: candle decides (it rejects what it does not implement).
            _ => return Ok(()),
        }
        if let Some(Item::Obj { depth, .. }) = stack.last() {
            if *depth > MAX_DEPTH {
                return Err(format!(
                    "data.pkl nests objects more than {MAX_DEPTH} levels deep (a crafted file?); refusing to load it"
                ));
            }
        }
        if stack.len() > 10_000_000 {
            return Err("data.pkl: more than 10 million objects on its stack".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{}` then `n` times: `d = {"k": d}` (BINPUT/SETITEM nesting).
    fn nested_dicts(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        for _ in 0..n {
            p.extend([b'}', b'X', 1, 0, 0, 0, b'k']);
        }
        p.push(b'}');
        p.extend(std::iter::repeat_n(b's', n));
        p.push(b'.');
        p
    }

    /// `x = [1]; repeat n: x = (x, x)` via memo: 2^n objects from O(n) bytes.
    fn memo_bomb(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', b'K', 1, b'a', b'q', 0];
        for _ in 0..n {
            p.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        p
    }

    #[test]
    fn deep_nesting_and_memo_bombs_are_refused_small_files_pass() {
        assert!(check(&nested_dicts(10)).is_ok());
        let e = check(&nested_dicts(20_000)).unwrap_err();
        assert!(e.contains("levels deep"), "{e}");
        assert!(check(&memo_bomb(5)).is_ok());
        let e = check(&memo_bomb(64)).unwrap_err();
        assert!(e.contains("memo"), "{e}");
        assert!(check(&[0x80, 2, b'X', 255, 255, 255, 255])
            .unwrap_err()
            .contains("ends inside"));
    }
}
