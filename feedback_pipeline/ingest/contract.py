"""The landing data contract compiled to set-based DuckDB SQL.

The contract itself (each record kind's ``FieldSpec`` list and cross-field rules) is data in
``warehouse/schema.py``, beside the raw tables it defines. ``validation_sql`` turns a kind into
one SELECT that types every field and yields, per record, either typed columns or the first
broken rule as a human-readable ``reason``. No Python runs per record.
"""

from __future__ import annotations

import re

from feedback_pipeline.warehouse.schema import (  # the contract's fields and kinds, as data
    SQL_TYPES,
    FieldSpec,
    KindSpec,
)


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _type(j: str) -> str:
    """The column holding the JSON type of field JSON ``j_<name>``, computed once per record."""
    return "t_" + j.removeprefix("j_")


def _json_type_from_text(j: str) -> str:
    """The JSON type of a parsed value from its first character, without parsing it again.

    ``json_transform`` hands each field back as minified JSON text, NULL for an absent field or
    a JSON null; non-finite numbers keep their spelling (``nan``, ``-Infinity``, ``1e999``).
    """
    return (
        f"CASE left({j}::VARCHAR, 1) WHEN '\"' THEN 'VARCHAR' WHEN '{{' THEN 'OBJECT' "
        f"WHEN '[' THEN 'ARRAY' WHEN 't' THEN 'BOOLEAN' WHEN 'f' THEN 'BOOLEAN' "
        f"ELSE 'NUMBER' END"
    )


def _string_value(j: str) -> str:
    return f"CASE WHEN {_type(j)} = 'VARCHAR' THEN json_extract_string({j}, '$') END"


def _number_value(j: str, lenient: bool) -> str:
    text_cast = (
        f" WHEN {_type(j)} = 'VARCHAR' THEN TRY_CAST(json_extract_string({j}, '$') AS DOUBLE)"
        if lenient
        else ""
    )
    return f"CASE WHEN {_type(j)} = 'NUMBER' THEN TRY_CAST({j} AS DOUBLE){text_cast} END"


def _features_json(j: str, lenient: bool) -> str:
    """The features object as JSON; CSV carries it as JSON text inside a string cell."""
    if not lenient:
        return j
    return (
        f"CASE WHEN {_type(j)} = 'VARCHAR' "
        f"THEN TRY_CAST(json_extract_string({j}, '$') AS JSON) ELSE {j} END"
    )


def _typed_value(spec: FieldSpec, j: str, lenient: bool) -> str:
    if spec.type in ("string", "enum"):
        return _string_value(j)
    if spec.type == "number":
        return _number_value(j, lenient)
    if spec.type in ("label", "integer"):
        return f"TRY_CAST({_number_value(j, lenient)} AS INTEGER)"
    if spec.type == "timestamp":
        return f"(TRY_CAST({_string_value(j)} AS TIMESTAMPTZ) AT TIME ZONE 'UTC')"
    if spec.type == "bool":
        text_cast = (
            f" WHEN {_type(j)} = 'VARCHAR' THEN TRY_CAST(json_extract_string({j}, '$') AS BOOLEAN)"
            if lenient
            else ""
        )
        return f"CASE WHEN {_type(j)} = 'BOOLEAN' THEN {j}::BOOLEAN{text_cast} END"
    if spec.type == "features":
        fj = _features_json(j, lenient)
        fj_type = f"json_type({fj})" if lenient else _type(j)
        return f"CASE WHEN {fj_type} = 'OBJECT' THEN {fj} END"
    raise ValueError(f"unknown field type {spec.type}")


def _field_checks(spec: FieldSpec, lenient: bool) -> list[tuple[str, str]]:
    """(broken_when, reason) pairs for one field, in the order they are reported."""
    j, v, name = f"j_{spec.name}", f"v_{spec.name}", spec.name
    present = f"{j} IS NOT NULL"  # absent and JSON null both come back as SQL NULL
    checks: list[tuple[str, str]] = []
    if spec.required:
        blank = f" OR {v} = ''" if spec.type in ("string", "enum") else ""
        checks.append((f"NOT {present}{blank}", f"missing required field {name}"))
    type_words = {
        "string": "a string",
        "enum": "a string",
        "timestamp": "an ISO-8601 timestamp",
        "number": "a number",
        "bool": "true or false",
        "label": "0 or 1",
        "integer": "a whole number",
        "features": "an object of name -> number or null",
    }
    if spec.type == "features":
        # Set-based and cheap on minified JSON: after a key, a value that opens with a quote,
        # bracket, brace or true/false is not a number. Non-finite values (nan, inf, 1e999, a
        # 300-digit literal) are summed only on the rare objects whose text could hold one.
        values = f"TRY_CAST(json_extract({v}, '$.*') AS DOUBLE[])"
        maybe_non_finite = f"regexp_matches({v}::VARCHAR, ':-?([nNiI]|[0-9.]+[eE]|[0-9.]{{300}})')"
        checks.append(
            (
                f"{present} AND {v} IS NULL",
                f"{name} must be an object of name -> number or null",
            )
        )
        checks.append((f"{v}::VARCHAR = '{{}}'", f"{name} must not be empty"))
        checks.append(
            (
                f"regexp_matches({v}::VARCHAR, '\":\\s*[\"\\[{{tfTF]')",
                f"{name} values must be numbers or null",
            )
        )
        checks.append(
            (
                f"{maybe_non_finite} AND NOT isfinite(coalesce(list_sum({values}), 0))",
                f"{name} values must be finite (no NaN or Infinity)",
            )
        )
        return checks
    checks.append((f"{present} AND {v} IS NULL", f"{name} must be {type_words[spec.type]}"))
    if spec.type == "number":
        checks.append((f"NOT isfinite({v})", f"{name} must be a finite number"))
    if spec.type == "timestamp":
        checks.append((f"NOT isfinite({v})", f"{name} must be a finite timestamp"))
    if spec.type == "label":
        checks.append(
            (f"{v} NOT IN (0, 1) OR {_number_value(j, lenient)} <> {v}", f"{name} must be 0 or 1")
        )
    if spec.type == "integer":
        checks.append((f"{_number_value(j, lenient)} <> {v}", f"{name} must be a whole number"))
    if spec.low is not None and spec.high is not None:
        checks.append(
            (
                f"{v} < {spec.low} OR {v} > {spec.high}",
                f"{name} out of range [{spec.low:g}, {spec.high:g}]",
            )
        )
    if spec.choices:
        allowed = ", ".join(sql_string(c) for c in spec.choices)
        checks.append(
            (f"{v} NOT IN ({allowed})", f"{name} must be one of {', '.join(spec.choices)}")
        )
    return checks


def validation_sql(spec: KindSpec, docs_relation: str, lenient: bool = False) -> str:
    """One SELECT over ``docs_relation(file_index, line_no, raw_text, doc, parse_error,
    unterminated)``: ``doc`` is the record's JSON text, ``parse_error`` a reason already known
    (invalid UTF-8, a refused CSV line), ``unterminated`` marks a last line without a newline.

    Returns ``file_index, line_no, raw_text, reason`` and the typed columns;
    ``reason`` is NULL for valid records, and ``raw_text`` is kept only for rejected ones. The
    record is parsed once; ``lenient`` accepts numbers and booleans written as text (CSV cells).
    """
    structure = "{" + ", ".join(f'"{f.name}": "JSON"' for f in spec.fields) + "}"
    extracted = ",\n        ".join(
        f"d.{f.name} AS j_{f.name}, {_json_type_from_text(f'd.{f.name}')} AS t_{f.name}"
        for f in spec.fields
    )
    no_known_field = " AND ".join(f"d.{f.name} IS NULL" for f in spec.fields)
    typed = ",\n        ".join(
        f"{_typed_value(f, f'j_{f.name}', lenient)} AS v_{f.name}" for f in spec.fields
    )
    checks: list[tuple[str, str]] = [
        ("parse_error IS NOT NULL", "__parse_error__"),
        ("NOT is_object", "record is not a JSON object"),
    ]
    for f in spec.fields:
        checks.extend(_field_checks(f, lenient))
    rule_checks = [(_rename_to_values(rule.broken_when, spec), rule.reason) for rule in spec.rules]
    checks.extend(rule_checks)
    whens = "\n            ".join(
        f"WHEN {cond} THEN {'parse_error' if reason == '__parse_error__' else sql_string(reason)}"
        for cond, reason in checks
    )
    outputs = []
    for f in spec.fields:
        value = f"v_{f.name}"
        if f.default is not None:
            value = f"coalesce({value}, {sql_string(f.default)})"
        outputs.append(f"{value}::{SQL_TYPES[f.type]} AS {f.name}")
    return f"""
WITH parsed AS (
    SELECT file_index, line_no, raw_text, doc, unterminated,
           CASE WHEN parse_error IS NULL THEN TRY(json_transform(doc, '{structure}')) END AS d,
           parse_error AS known_error
    FROM {docs_relation}
), extracted AS (
    SELECT file_index, line_no, raw_text,
        CASE
            WHEN known_error IS NOT NULL THEN known_error
            WHEN d IS NOT NULL THEN NULL
            -- json_transform yields NULL for JSON that is valid but null, too
            WHEN json_valid(doc) THEN NULL
            WHEN unterminated THEN 'truncated last line (malformed JSON)'
            ELSE 'malformed JSON'
        END AS parse_error,
        -- a valid document with none of the fields may be an array or a scalar: look closer
        CASE WHEN d IS NULL OR ({no_known_field}) THEN json_type(TRY_CAST(doc AS JSON)) = 'OBJECT'
             ELSE true END AS is_object,
        {extracted}
    FROM parsed
), typed AS (
    SELECT *,
        {typed}
    FROM extracted
), judged AS (
    SELECT *,
        CASE
            {whens}
        END AS reason
    FROM typed
)
SELECT file_index, line_no, CASE WHEN reason IS NOT NULL THEN raw_text END AS raw_text, reason,
       {", ".join(outputs)}
FROM judged
"""


def _canonical_text(spec: FieldSpec, column: str) -> str:
    """A value as text that is equal for equal content: a features object with its keys sorted
    and its numbers as doubles (``{"b": 1, "a": 2.50}`` = ``{"a": 2.5, "b": 1.0}``)."""
    if spec.type == "features":
        sorted_entries = f"list_sort(map_entries(TRY_CAST({column} AS MAP(VARCHAR, DOUBLE))))"
        return f"coalesce({sorted_entries}::VARCHAR, {column}::VARCHAR)"
    return f"{column}::VARCHAR"


def record_hash_sql(spec: KindSpec, alias: str) -> str:
    """The md5 of a record's typed values (``alias.<field>``), so that a re-sent record with
    the same content is recognised as a duplicate whatever its formatting, key order or file
    format. Only records whose id repeats are hashed, so the canonical form costs little."""
    parts = ", ".join(
        f"coalesce({_canonical_text(f, f'{alias}.{f.name}')}, '\\N')" for f in spec.fields
    )
    return f"md5(concat_ws(chr(31), {parts}))"


def _rename_to_values(condition: str, spec: KindSpec) -> str:
    """Record rules are written over field names; inside the query fields are ``v_<name>``.

    Quoted SQL string literals are left alone.
    """
    names = "|".join(sorted((f.name for f in spec.fields), key=len, reverse=True))
    parts = re.split(r"('(?:[^']|'')*')", condition)
    return "".join(
        part if part.startswith("'") else re.sub(rf"\b({names})\b", r"v_\1", part) for part in parts
    )
