//! What PostgreSQL's grammar cannot read, found before anything is forked (squawk's parser), and positions in a
//! file as line and column.

use squawk_syntax::SourceFile;

/// A statement squawk's parser (PostgreSQL's grammar) cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The syntax errors of `sql`, in order.
pub fn syntax_errors(sql: &str) -> Vec<SyntaxProblem> {
    let mut errors: Vec<SyntaxProblem> = SourceFile::parse(sql)
        .errors()
        .into_iter()
        .map(|e| {
            let (line, column) = position(sql, u32::from(e.range().start()) as usize);
            SyntaxProblem {
                line,
                column,
                message: e.message().to_string(),
            }
        })
        .collect();
    errors.sort_by_key(|e| (e.line, e.column));
    errors
}

/// The 1-based line and column of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|i| *i <= offset)
        .last()
        .unwrap_or(0)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}
