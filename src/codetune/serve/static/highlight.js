// A tiny syntax highlighter (comments, strings, numbers, keywords, builtins, function names) for the
// playground's languages. No dependencies, no network: the page works offline.
"use strict";

(function () {
  const C_LIKE = { line: ["//"], block: ["/*", "*/"], charq: true };
  const LANGS = {
    python: {
      line: ["#"], triple: true,
      kw: "False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case",
      bi: "print len range int str float list dict set tuple bool isinstance enumerate zip map filter sum min max abs sorted reversed open any all self super type object",
      decl: "def class",
    },
    javascript: {
      line: ["//"], block: ["/*", "*/"], backtick: true,
      kw: "async await break case catch class const continue debugger default delete do else export extends finally for from function if import in instanceof let new of return static super switch this throw try typeof var void while yield null undefined true false",
      bi: "console Math JSON Object Array String Number Boolean Promise Map Set parseInt parseFloat",
      decl: "function class",
    },
    java: Object.assign({}, C_LIKE, {
      kw: "abstract boolean break byte case catch char class continue default do double else enum extends final finally float for if implements import instanceof int interface long new package private protected public return short static super switch this throw throws try void while var null true false",
      bi: "String System Math Integer List Map ArrayList HashMap Object",
      decl: "class interface enum",
    }),
    c: Object.assign({}, C_LIKE, {
      kw: "auto break case char const continue default do double else enum extern float for goto if inline int long register return short signed sizeof static struct switch typedef union unsigned void volatile while NULL true false bool",
      bi: "printf malloc free memcpy strlen size_t",
      decl: "struct enum union",
    }),
    go: Object.assign({}, C_LIKE, {
      backtick: true,
      kw: "break case chan const continue default defer else fallthrough for func go goto if import interface map package range return select struct switch type var nil true false",
      bi: "len cap append make new panic print println string int int64 float64 bool byte rune error fmt",
      decl: "func type",
    }),
    rust: Object.assign({}, C_LIKE, {
      kw: "as break const continue crate else enum extern false fn for if impl in let loop match mod move mut pub ref return self Self static struct super trait true type unsafe use where while async await dyn",
      bi: "Vec String Option Some None Result Ok Err Box println format i32 i64 u32 u64 usize f64 bool str",
      decl: "fn struct enum trait",
    }),
    bash: {
      line: ["#"],
      kw: "if then else elif fi for while until do done case esac in function return local export break continue",
      bi: "echo printf read cd ls grep sed awk cat test set",
      decl: "function",
    },
    sql: {
      line: ["--"], block: ["/*", "*/"],
      kw: "select from where and or not insert into values update set delete create table drop alter join left right inner outer on as group by order having limit distinct null is in like between union all case when then else end primary key",
      bi: "count sum avg min max coalesce",
      decl: "",
      nocase: true,
    },
  };
  LANGS.typescript = Object.assign({}, LANGS.javascript, {
    kw: LANGS.javascript.kw + " interface type enum implements private public protected readonly abstract declare namespace as",
    bi: LANGS.javascript.bi + " string number boolean any unknown never",
    decl: "function class interface type enum",
  });
  LANGS.cpp = Object.assign({}, LANGS.c, {
    kw: LANGS.c.kw + " class namespace template typename public private protected virtual override new delete this using nullptr try catch throw constexpr auto",
    bi: LANGS.c.bi + " std vector string map cout cin endl",
    decl: "class struct enum namespace",
  });

  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function escapeRe(s) {
    return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }

  const compiled = {};
  function compile(name) {
    if (compiled[name]) return compiled[name];
    const spec = LANGS[name] || LANGS.python;
    const parts = [];
    if (spec.block) parts.push(["com", escapeRe(spec.block[0]) + "[\\s\\S]*?(?:" + escapeRe(spec.block[1]) + "|$)"]);
    if (spec.line) parts.push(["com", "(?:" + spec.line.map(escapeRe).join("|") + ")[^\\n]*"]);
    if (spec.triple) parts.push(["str", "\"\"\"[\\s\\S]*?(?:\"\"\"|$)|'''[\\s\\S]*?(?:'''|$)"]);
    let str = "\"(?:\\\\.|[^\"\\\\\\n])*\"?";
    str += spec.charq ? "|'(?:\\\\.|[^'\\\\\\n])'" : "|'(?:\\\\.|[^'\\\\\\n])*'?";
    if (spec.backtick) str += "|`(?:\\\\.|[^`\\\\])*`?";
    parts.push(["str", str]);
    parts.push(["num", "\\b(?:0[xX][0-9a-fA-F_]+|\\d[\\d_]*(?:\\.\\d[\\d_]*)?(?:[eE][+-]?\\d+)?)\\b"]);
    parts.push(["word", "[A-Za-z_$][\\w$]*"]);
    const words = (s) => new Set((spec.nocase ? s.toLowerCase() : s).split(/\s+/).filter(Boolean));
    compiled[name] = {
      re: new RegExp(parts.map((p) => "(" + p[1] + ")").join("|"), "g"),
      kinds: parts.map((p) => p[0]),
      kw: words(spec.kw || ""), bi: words(spec.bi || ""), decl: words(spec.decl || ""),
      nocase: !!spec.nocase,
    };
    return compiled[name];
  }

  // HTML with <span class="tok-…"> around the tokens of `code` in language `lang`.
  function highlight(code, lang) {
    const c = compile(lang);
    let out = "", last = 0, prevWord = "", m;
    c.re.lastIndex = 0;
    while ((m = c.re.exec(code)) !== null) {
      if (m[0] === "") { c.re.lastIndex++; continue; }
      out += escapeHtml(code.slice(last, m.index));
      let kind = c.kinds[m.slice(1).findIndex((g) => g !== undefined)];
      const text = m[0];
      if (kind === "word") {
        const key = c.nocase ? text.toLowerCase() : text;
        if (c.kw.has(key)) kind = "kw";
        else if (c.decl.has(prevWord)) kind = "fn";
        else if (c.bi.has(key)) kind = "bi";
        else if (/^\s*\(/.test(code.slice(m.index + text.length, m.index + text.length + 8))) kind = "fn";
        else kind = "";
        prevWord = key;
      }
      out += kind ? '<span class="tok-' + kind + '">' + escapeHtml(text) + "</span>" : escapeHtml(text);
      last = m.index + text.length;
    }
    return out + escapeHtml(code.slice(last));
  }

  window.codetuneHighlight = highlight;
  window.codetuneEscape = escapeHtml;
})();
