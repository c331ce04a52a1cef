// The JavaScript side of HumanEval's problems, written by hand, one problem at a time: for each problem a
// prompt (a JSDoc comment with the examples, and the signature), the solution (the body and the closing
// brace) and tests that follow the Python problem's `check` assert for assert (Node.js's assert module).
// Functions keep HumanEval's names. Python tuples are arrays here, None is null.
// `codetune.benchmarks.humaneval_js.build_rows` turns this file into humaneval_js-v1.jsonl; the tests check
// that every solution passes its own tests under Node.js, and the Python solution passes HumanEval's.
// Not translated: HumanEval/32 and /38 (their tests draw random cases with Python's random module).

//// HumanEval/0
//// prompt
/**
 * Check if in given array of numbers, are any two numbers closer to each other than given threshold.
 * >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
 * false
 * >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
 * true
 */
function has_close_elements(numbers, threshold) {
//// solution
  for (let i = 0; i < numbers.length; i++) {
    for (let j = 0; j < numbers.length; j++) {
      if (i !== j && Math.abs(numbers[i] - numbers[j]) < threshold) {
        return true;
      }
    }
  }
  return false;
}
//// tests
const assert = require("node:assert");
const candidate = has_close_elements;
assert.deepStrictEqual(candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3), true);
assert.deepStrictEqual(candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05), false);
assert.deepStrictEqual(candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95), true);
assert.deepStrictEqual(candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8), false);
assert.deepStrictEqual(candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1), true);
assert.deepStrictEqual(candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0), true);
assert.deepStrictEqual(candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5), false);

//// HumanEval/1
//// prompt
/**
 * Input to this function is a string containing multiple groups of nested parentheses. Your goal is to
 * separate those group into separate strings and return the array of those.
 * Separate groups are balanced (each open brace is properly closed) and not nested within each other.
 * Ignore any spaces in the input string.
 * >>> separate_paren_groups("( ) (( )) (( )( ))")
 * ["()", "(())", "(()())"]
 */
function separate_paren_groups(paren_string) {
//// solution
  const result = [];
  let current = "";
  let depth = 0;
  for (const c of paren_string) {
    if (c === "(") {
      depth += 1;
      current += c;
    } else if (c === ")") {
      depth -= 1;
      current += c;
      if (depth === 0) {
        result.push(current);
        current = "";
      }
    }
  }
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = separate_paren_groups;
assert.deepStrictEqual(candidate("(()()) ((())) () ((())()())"), ["(()())", "((()))", "()", "((())()())"]);
assert.deepStrictEqual(candidate("() (()) ((())) (((())))"), ["()", "(())", "((()))", "(((())))"]);
assert.deepStrictEqual(candidate("(()(())((())))"), ["(()(())((())))"]);
assert.deepStrictEqual(candidate("( ) (( )) (( )( ))"), ["()", "(())", "(()())"]);

//// HumanEval/2
//// prompt
/**
 * Given a positive floating point number, it can be decomposed into an integer part (largest integer
 * smaller than given number) and decimals (leftover part always smaller than 1).
 * Return the decimal part of the number.
 * >>> truncate_number(3.5)
 * 0.5
 */
function truncate_number(number) {
//// solution
  return number % 1.0;
}
//// tests
const assert = require("node:assert");
const candidate = truncate_number;
assert.deepStrictEqual(candidate(3.5), 0.5);
assert.ok(Math.abs(candidate(1.33) - 0.33) < 1e-6);
assert.ok(Math.abs(candidate(123.456) - 0.456) < 1e-6);

//// HumanEval/3
//// prompt
/**
 * You're given an array of deposit and withdrawal operations on a bank account that starts with zero
 * balance. Your task is to detect if at any point the balance of account falls below zero, and at that
 * point function should return true. Otherwise it should return false.
 * >>> below_zero([1, 2, 3])
 * false
 * >>> below_zero([1, 2, -4, 5])
 * true
 */
function below_zero(operations) {
//// solution
  let balance = 0;
  for (const op of operations) {
    balance += op;
    if (balance < 0) {
      return true;
    }
  }
  return false;
}
//// tests
const assert = require("node:assert");
const candidate = below_zero;
assert.deepStrictEqual(candidate([]), false);
assert.deepStrictEqual(candidate([1, 2, -3, 1, 2, -3]), false);
assert.deepStrictEqual(candidate([1, 2, -4, 5, 6]), true);
assert.deepStrictEqual(candidate([1, -1, 2, -2, 5, -5, 4, -4]), false);
assert.deepStrictEqual(candidate([1, -1, 2, -2, 5, -5, 4, -5]), true);
assert.deepStrictEqual(candidate([1, -2, 2, -2, 5, -5, 4, -4]), true);

//// HumanEval/4
//// prompt
/**
 * For a given array of input numbers, calculate Mean Absolute Deviation around the mean of this dataset.
 * Mean Absolute Deviation is the average absolute difference between each element and a centerpoint
 * (mean in this case):
 * MAD = average | x - x_mean |
 * >>> mean_absolute_deviation([1.0, 2.0, 3.0, 4.0])
 * 1.0
 */
function mean_absolute_deviation(numbers) {
//// solution
  const mean = numbers.reduce((a, b) => a + b, 0) / numbers.length;
  return numbers.reduce((acc, x) => acc + Math.abs(x - mean), 0) / numbers.length;
}
//// tests
const assert = require("node:assert");
const candidate = mean_absolute_deviation;
assert.ok(Math.abs(candidate([1.0, 2.0, 3.0]) - 2.0 / 3.0) < 1e-6);
assert.ok(Math.abs(candidate([1.0, 2.0, 3.0, 4.0]) - 1.0) < 1e-6);
assert.ok(Math.abs(candidate([1.0, 2.0, 3.0, 4.0, 5.0]) - 6.0 / 5.0) < 1e-6);

//// HumanEval/5
//// prompt
/**
 * Insert a number 'delimeter' between every two consecutive elements of input array `numbers'.
 * >>> intersperse([], 4)
 * []
 * >>> intersperse([1, 2, 3], 4)
 * [1, 4, 2, 4, 3]
 */
function intersperse(numbers, delimeter) {
//// solution
  if (numbers.length === 0) {
    return [];
  }
  const result = [];
  for (const n of numbers.slice(0, -1)) {
    result.push(n);
    result.push(delimeter);
  }
  result.push(numbers[numbers.length - 1]);
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = intersperse;
assert.deepStrictEqual(candidate([], 7), []);
assert.deepStrictEqual(candidate([5, 6, 3, 2], 8), [5, 8, 6, 8, 3, 8, 2]);
assert.deepStrictEqual(candidate([2, 2, 2], 2), [2, 2, 2, 2, 2]);

//// HumanEval/6
//// prompt
/**
 * Input to this function is a string represented multiple groups for nested parentheses separated by
 * spaces. For each of the group, output the deepest level of nesting of parentheses.
 * E.g. (()()) has maximum two levels of nesting while ((())) has three.
 * >>> parse_nested_parens("(()()) ((())) () ((())()())")
 * [2, 3, 1, 3]
 */
function parse_nested_parens(paren_string) {
//// solution
  const parseGroup = (s) => {
    let depth = 0;
    let maxDepth = 0;
    for (const c of s) {
      if (c === "(") {
        depth += 1;
        maxDepth = Math.max(depth, maxDepth);
      } else {
        depth -= 1;
      }
    }
    return maxDepth;
  };
  return paren_string.split(" ").filter((x) => x).map(parseGroup);
}
//// tests
const assert = require("node:assert");
const candidate = parse_nested_parens;
assert.deepStrictEqual(candidate("(()()) ((())) () ((())()())"), [2, 3, 1, 3]);
assert.deepStrictEqual(candidate("() (()) ((())) (((())))"), [1, 2, 3, 4]);
assert.deepStrictEqual(candidate("(()(())((())))"), [4]);

//// HumanEval/7
//// prompt
/**
 * Filter an input array of strings only for ones that contain given substring.
 * >>> filter_by_substring([], "a")
 * []
 * >>> filter_by_substring(["abc", "bacd", "cde", "array"], "a")
 * ["abc", "bacd", "array"]
 */
function filter_by_substring(strings, substring) {
//// solution
  return strings.filter((x) => x.includes(substring));
}
//// tests
const assert = require("node:assert");
const candidate = filter_by_substring;
assert.deepStrictEqual(candidate([], "john"), []);
assert.deepStrictEqual(candidate(["xxx", "asd", "xxy", "john doe", "xxxAAA", "xxx"], "xxx"), ["xxx", "xxxAAA", "xxx"]);
assert.deepStrictEqual(candidate(["xxx", "asd", "aaaxxy", "john doe", "xxxAAA", "xxx"], "xx"), ["xxx", "aaaxxy", "xxxAAA", "xxx"]);
assert.deepStrictEqual(candidate(["grunt", "trumpet", "prune", "gruesome"], "run"), ["grunt", "prune"]);

//// HumanEval/8
//// prompt
/**
 * For a given array of integers, return an array of two numbers: the sum and the product of all the
 * integers in the array. Empty sum should be equal to 0 and empty product should be equal to 1.
 * >>> sum_product([])
 * [0, 1]
 * >>> sum_product([1, 2, 3, 4])
 * [10, 24]
 */
function sum_product(numbers) {
//// solution
  let sumValue = 0;
  let prodValue = 1;
  for (const n of numbers) {
    sumValue += n;
    prodValue *= n;
  }
  return [sumValue, prodValue];
}
//// tests
const assert = require("node:assert");
const candidate = sum_product;
assert.deepStrictEqual(candidate([]), [0, 1]);
assert.deepStrictEqual(candidate([1, 1, 1]), [3, 1]);
assert.deepStrictEqual(candidate([100, 0]), [100, 0]);
assert.deepStrictEqual(candidate([3, 5, 7]), [3 + 5 + 7, 3 * 5 * 7]);
assert.deepStrictEqual(candidate([10]), [10, 10]);

//// HumanEval/9
//// prompt
/**
 * From a given array of integers, generate an array of rolling maximum element found until given moment
 * in the sequence.
 * >>> rolling_max([1, 2, 3, 2, 3, 4, 2])
 * [1, 2, 3, 3, 3, 4, 4]
 */
function rolling_max(numbers) {
//// solution
  let runningMax = null;
  const result = [];
  for (const n of numbers) {
    runningMax = runningMax === null ? n : Math.max(runningMax, n);
    result.push(runningMax);
  }
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = rolling_max;
assert.deepStrictEqual(candidate([]), []);
assert.deepStrictEqual(candidate([1, 2, 3, 4]), [1, 2, 3, 4]);
assert.deepStrictEqual(candidate([4, 3, 2, 1]), [4, 4, 4, 4]);
assert.deepStrictEqual(candidate([3, 2, 3, 100, 3]), [3, 3, 3, 100, 100]);

//// HumanEval/10
//// prompt
/**
 * Test if given string is a palindrome.
 */
function is_palindrome(string) {
  return string === string.split("").reverse().join("");
}

/**
 * Find the shortest palindrome that begins with a supplied string.
 * Algorithm idea is simple:
 * - Find the longest postfix of supplied string that is a palindrome.
 * - Append to the end of the string reverse of a string prefix that comes before the palindromic suffix.
 * >>> make_palindrome("")
 * ""
 * >>> make_palindrome("cat")
 * "catac"
 * >>> make_palindrome("cata")
 * "catac"
 */
function make_palindrome(string) {
//// solution
  if (string === "") {
    return "";
  }
  let beginningOfSuffix = 0;
  while (!is_palindrome(string.slice(beginningOfSuffix))) {
    beginningOfSuffix += 1;
  }
  return string + string.slice(0, beginningOfSuffix).split("").reverse().join("");
}
//// tests
const assert = require("node:assert");
const candidate = make_palindrome;
assert.deepStrictEqual(candidate(""), "");
assert.deepStrictEqual(candidate("x"), "x");
assert.deepStrictEqual(candidate("xyz"), "xyzyx");
assert.deepStrictEqual(candidate("xyx"), "xyx");
assert.deepStrictEqual(candidate("jerry"), "jerryrrej");

//// HumanEval/11
//// prompt
/**
 * Input are two strings a and b consisting only of 1s and 0s.
 * Perform binary XOR on these inputs and return result also as a string.
 * >>> string_xor("010", "110")
 * "100"
 */
function string_xor(a, b) {
//// solution
  let result = "";
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    result += a[i] === b[i] ? "0" : "1";
  }
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = string_xor;
assert.deepStrictEqual(candidate("111000", "101010"), "010010");
assert.deepStrictEqual(candidate("1", "1"), "0");
assert.deepStrictEqual(candidate("0101", "0000"), "0101");

//// HumanEval/12
//// prompt
/**
 * Out of array of strings, return the longest one. Return the first one in case of multiple strings of
 * the same length. Return null in case the input array is empty.
 * >>> longest([])
 * null
 * >>> longest(["a", "b", "c"])
 * "a"
 * >>> longest(["a", "bb", "ccc"])
 * "ccc"
 */
function longest(strings) {
//// solution
  if (strings.length === 0) {
    return null;
  }
  const maxlen = Math.max(...strings.map((x) => x.length));
  return strings.find((s) => s.length === maxlen);
}
//// tests
const assert = require("node:assert");
const candidate = longest;
assert.deepStrictEqual(candidate([]), null);
assert.deepStrictEqual(candidate(["x", "y", "z"]), "x");
assert.deepStrictEqual(candidate(["x", "yyy", "zzzz", "www", "kkkk", "abc"]), "zzzz");

//// HumanEval/13
//// prompt
/**
 * Return a greatest common divisor of two integers a and b.
 * >>> greatest_common_divisor(3, 5)
 * 1
 * >>> greatest_common_divisor(25, 15)
 * 5
 */
function greatest_common_divisor(a, b) {
//// solution
  while (b !== 0) {
    [a, b] = [b, a % b];
  }
  return a;
}
//// tests
const assert = require("node:assert");
const candidate = greatest_common_divisor;
assert.deepStrictEqual(candidate(3, 7), 1);
assert.deepStrictEqual(candidate(10, 15), 5);
assert.deepStrictEqual(candidate(49, 14), 7);
assert.deepStrictEqual(candidate(144, 60), 12);

//// HumanEval/14
//// prompt
/**
 * Return array of all prefixes from shortest to longest of the input string.
 * >>> all_prefixes("abc")
 * ["a", "ab", "abc"]
 */
function all_prefixes(string) {
//// solution
  const result = [];
  for (let i = 0; i < string.length; i++) {
    result.push(string.slice(0, i + 1));
  }
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = all_prefixes;
assert.deepStrictEqual(candidate(""), []);
assert.deepStrictEqual(candidate("asdfgh"), ["a", "as", "asd", "asdf", "asdfg", "asdfgh"]);
assert.deepStrictEqual(candidate("WWW"), ["W", "WW", "WWW"]);

//// HumanEval/15
//// prompt
/**
 * Return a string containing space-delimited numbers starting from 0 upto n inclusive.
 * >>> string_sequence(0)
 * "0"
 * >>> string_sequence(5)
 * "0 1 2 3 4 5"
 */
function string_sequence(n) {
//// solution
  const parts = [];
  for (let x = 0; x <= n; x++) {
    parts.push(String(x));
  }
  return parts.join(" ");
}
//// tests
const assert = require("node:assert");
const candidate = string_sequence;
assert.deepStrictEqual(candidate(0), "0");
assert.deepStrictEqual(candidate(3), "0 1 2 3");
assert.deepStrictEqual(candidate(10), "0 1 2 3 4 5 6 7 8 9 10");

//// HumanEval/16
//// prompt
/**
 * Given a string, find out how many distinct characters (regardless of case) does it consist of.
 * >>> count_distinct_characters("xyzXYZ")
 * 3
 * >>> count_distinct_characters("Jerry")
 * 4
 */
function count_distinct_characters(string) {
//// solution
  return new Set(string.toLowerCase()).size;
}
//// tests
const assert = require("node:assert");
const candidate = count_distinct_characters;
assert.deepStrictEqual(candidate(""), 0);
assert.deepStrictEqual(candidate("abcde"), 5);
assert.deepStrictEqual(candidate("abcde" + "cade" + "CADE"), 5);
assert.deepStrictEqual(candidate("aaaaAAAAaaaa"), 1);
assert.deepStrictEqual(candidate("Jerry jERRY JeRRRY"), 5);

//// HumanEval/17
//// prompt
/**
 * Input to this function is a string representing musical notes in a special ASCII format.
 * Your task is to parse this string and return array of integers corresponding to how many beats does
 * each note last.
 *
 * Here is a legend:
 * "o" - whole note, lasts four beats
 * "o|" - half note, lasts two beats
 * ".|" - quater note, lasts one beat
 *
 * >>> parse_music("o o| .| o| o| .| .| .| .| o o")
 * [4, 2, 1, 2, 2, 1, 1, 1, 1, 4, 4]
 */
function parse_music(music_string) {
//// solution
  const noteMap = { o: 4, "o|": 2, ".|": 1 };
  return music_string.split(" ").filter((x) => x).map((x) => noteMap[x]);
}
//// tests
const assert = require("node:assert");
const candidate = parse_music;
assert.deepStrictEqual(candidate(""), []);
assert.deepStrictEqual(candidate("o o o o"), [4, 4, 4, 4]);
assert.deepStrictEqual(candidate(".| .| .| .|"), [1, 1, 1, 1]);
assert.deepStrictEqual(candidate("o| o| .| .| o o o o"), [2, 2, 1, 1, 4, 4, 4, 4]);
assert.deepStrictEqual(candidate("o| .| o| .| o o| o o|"), [2, 1, 2, 1, 4, 2, 4, 2]);

//// HumanEval/18
//// prompt
/**
 * Find how many times a given substring can be found in the original string. Count overlaping cases.
 * >>> how_many_times("", "a")
 * 0
 * >>> how_many_times("aaa", "a")
 * 3
 * >>> how_many_times("aaaa", "aa")
 * 3
 */
function how_many_times(string, substring) {
//// solution
  let times = 0;
  for (let i = 0; i < string.length - substring.length + 1; i++) {
    if (string.slice(i, i + substring.length) === substring) {
      times += 1;
    }
  }
  return times;
}
//// tests
const assert = require("node:assert");
const candidate = how_many_times;
assert.deepStrictEqual(candidate("", "x"), 0);
assert.deepStrictEqual(candidate("xyxyxyx", "x"), 4);
assert.deepStrictEqual(candidate("cacacacac", "cac"), 4);
assert.deepStrictEqual(candidate("john doe", "john"), 1);

//// HumanEval/19
//// prompt
/**
 * Input is a space-delimited string of numberals from "zero" to "nine".
 * Valid choices are "zero", "one", "two", "three", "four", "five", "six", "seven", "eight" and "nine".
 * Return the string with numbers sorted from smallest to largest.
 * >>> sort_numbers("three one five")
 * "one three five"
 */
function sort_numbers(numbers) {
//// solution
  const valueMap = {
    zero: 0,
    one: 1,
    two: 2,
    three: 3,
    four: 4,
    five: 5,
    six: 6,
    seven: 7,
    eight: 8,
    nine: 9,
  };
  return numbers
    .split(" ")
    .filter((x) => x)
    .sort((a, b) => valueMap[a] - valueMap[b])
    .join(" ");
}
//// tests
const assert = require("node:assert");
const candidate = sort_numbers;
assert.deepStrictEqual(candidate(""), "");
assert.deepStrictEqual(candidate("three"), "three");
assert.deepStrictEqual(candidate("three five nine"), "three five nine");
assert.deepStrictEqual(candidate("five zero four seven nine eight"), "zero four five seven eight nine");
assert.deepStrictEqual(candidate("six five four three two one zero"), "zero one two three four five six");

//// HumanEval/20
//// prompt
/**
 * From a supplied array of numbers (of length at least two) select and return two that are the closest
 * to each other and return them in order (smaller number, larger number).
 * >>> find_closest_elements([1.0, 2.0, 3.0, 4.0, 5.0, 2.2])
 * [2.0, 2.2]
 * >>> find_closest_elements([1.0, 2.0, 3.0, 4.0, 5.0, 2.0])
 * [2.0, 2.0]
 */
function find_closest_elements(numbers) {
//// solution
  let closestPair = null;
  let distance = null;
  for (let i = 0; i < numbers.length; i++) {
    for (let j = 0; j < numbers.length; j++) {
      if (i !== j) {
        const d = Math.abs(numbers[i] - numbers[j]);
        if (distance === null || d < distance) {
          distance = d;
          closestPair = [Math.min(numbers[i], numbers[j]), Math.max(numbers[i], numbers[j])];
        }
      }
    }
  }
  return closestPair;
}
//// tests
const assert = require("node:assert");
const candidate = find_closest_elements;
assert.deepStrictEqual(candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2]), [3.9, 4.0]);
assert.deepStrictEqual(candidate([1.0, 2.0, 5.9, 4.0, 5.0]), [5.0, 5.9]);
assert.deepStrictEqual(candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.2]), [2.0, 2.2]);
assert.deepStrictEqual(candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0]), [2.0, 2.0]);
assert.deepStrictEqual(candidate([1.1, 2.2, 3.1, 4.1, 5.1]), [2.2, 3.1]);

//// HumanEval/21
//// prompt
/**
 * Given array of numbers (of at least two elements), apply a linear transform to that array,
 * such that the smallest number will become 0 and the largest will become 1.
 * >>> rescale_to_unit([1.0, 2.0, 3.0, 4.0, 5.0])
 * [0.0, 0.25, 0.5, 0.75, 1.0]
 */
function rescale_to_unit(numbers) {
//// solution
  const minNumber = Math.min(...numbers);
  const maxNumber = Math.max(...numbers);
  return numbers.map((x) => (x - minNumber) / (maxNumber - minNumber));
}
//// tests
const assert = require("node:assert");
const candidate = rescale_to_unit;
assert.deepStrictEqual(candidate([2.0, 49.9]), [0.0, 1.0]);
assert.deepStrictEqual(candidate([100.0, 49.9]), [1.0, 0.0]);
assert.deepStrictEqual(candidate([1.0, 2.0, 3.0, 4.0, 5.0]), [0.0, 0.25, 0.5, 0.75, 1.0]);
assert.deepStrictEqual(candidate([2.0, 1.0, 5.0, 3.0, 4.0]), [0.25, 0.0, 1.0, 0.5, 0.75]);
assert.deepStrictEqual(candidate([12.0, 11.0, 15.0, 13.0, 14.0]), [0.25, 0.0, 1.0, 0.5, 0.75]);

//// HumanEval/22
//// prompt
/**
 * Filter given array of any JavaScript values only for integers.
 * >>> filter_integers(["a", 3.14, 5])
 * [5]
 * >>> filter_integers([1, 2, 3, "abc", {}, []])
 * [1, 2, 3]
 */
function filter_integers(values) {
//// solution
  return values.filter((x) => Number.isInteger(x));
}
//// tests
const assert = require("node:assert");
const candidate = filter_integers;
assert.deepStrictEqual(candidate([]), []);
assert.deepStrictEqual(candidate([4, {}, [], 23.2, 9, "adasd"]), [4, 9]);
assert.deepStrictEqual(candidate([3, "c", 3, 3, "a", "b"]), [3, 3, 3]);

//// HumanEval/23
//// prompt
/**
 * Return length of given string.
 * >>> strlen("")
 * 0
 * >>> strlen("abc")
 * 3
 */
function strlen(string) {
//// solution
  return string.length;
}
//// tests
const assert = require("node:assert");
const candidate = strlen;
assert.deepStrictEqual(candidate(""), 0);
assert.deepStrictEqual(candidate("x"), 1);
assert.deepStrictEqual(candidate("asdasnakj"), 9);

//// HumanEval/24
//// prompt
/**
 * For a given number n, find the largest number that divides n evenly, smaller than n.
 * >>> largest_divisor(15)
 * 5
 */
function largest_divisor(n) {
//// solution
  for (let i = n - 1; i > 0; i--) {
    if (n % i === 0) {
      return i;
    }
  }
}
//// tests
const assert = require("node:assert");
const candidate = largest_divisor;
assert.deepStrictEqual(candidate(3), 1);
assert.deepStrictEqual(candidate(7), 1);
assert.deepStrictEqual(candidate(10), 5);
assert.deepStrictEqual(candidate(100), 50);
assert.deepStrictEqual(candidate(49), 7);

//// HumanEval/25
//// prompt
/**
 * Return array of prime factors of given integer in the order from smallest to largest.
 * Each of the factors should be listed number of times corresponding to how many times it appeares in
 * factorization. Input number should be equal to the product of all factors.
 * >>> factorize(8)
 * [2, 2, 2]
 * >>> factorize(25)
 * [5, 5]
 * >>> factorize(70)
 * [2, 5, 7]
 */
function factorize(n) {
//// solution
  const fact = [];
  let i = 2;
  while (i <= Math.floor(Math.sqrt(n) + 1)) {
    if (n % i === 0) {
      fact.push(i);
      n = Math.floor(n / i);
    } else {
      i += 1;
    }
  }
  if (n > 1) {
    fact.push(n);
  }
  return fact;
}
//// tests
const assert = require("node:assert");
const candidate = factorize;
assert.deepStrictEqual(candidate(2), [2]);
assert.deepStrictEqual(candidate(4), [2, 2]);
assert.deepStrictEqual(candidate(8), [2, 2, 2]);
assert.deepStrictEqual(candidate(3 * 19), [3, 19]);
assert.deepStrictEqual(candidate(3 * 19 * 3 * 19), [3, 3, 19, 19]);
assert.deepStrictEqual(candidate(3 * 19 * 3 * 19 * 3 * 19), [3, 3, 3, 19, 19, 19]);
assert.deepStrictEqual(candidate(3 * 19 * 19 * 19), [3, 19, 19, 19]);
assert.deepStrictEqual(candidate(3 * 2 * 3), [2, 3, 3]);

//// HumanEval/26
//// prompt
/**
 * From an array of integers, remove all elements that occur more than once.
 * Keep order of elements left the same as in the input.
 * >>> remove_duplicates([1, 2, 3, 2, 4])
 * [1, 3, 4]
 */
function remove_duplicates(numbers) {
//// solution
  const counts = new Map();
  for (const n of numbers) {
    counts.set(n, (counts.get(n) || 0) + 1);
  }
  return numbers.filter((n) => counts.get(n) <= 1);
}
//// tests
const assert = require("node:assert");
const candidate = remove_duplicates;
assert.deepStrictEqual(candidate([]), []);
assert.deepStrictEqual(candidate([1, 2, 3, 4]), [1, 2, 3, 4]);
assert.deepStrictEqual(candidate([1, 2, 3, 2, 4, 3, 5]), [1, 4, 5]);

//// HumanEval/27
//// prompt
/**
 * For a given string, flip lowercase characters to uppercase and uppercase to lowercase.
 * >>> flip_case("Hello")
 * "hELLO"
 */
function flip_case(string) {
//// solution
  let result = "";
  for (const c of string) {
    const lower = c.toLowerCase();
    result += c === lower ? c.toUpperCase() : lower;
  }
  return result;
}
//// tests
const assert = require("node:assert");
const candidate = flip_case;
assert.deepStrictEqual(candidate(""), "");
assert.deepStrictEqual(candidate("Hello!"), "hELLO!");
assert.deepStrictEqual(candidate("These violent delights have violent ends"), "tHESE VIOLENT DELIGHTS HAVE VIOLENT ENDS");

//// HumanEval/28
//// prompt
/**
 * Concatenate array of strings into a single string.
 * >>> concatenate([])
 * ""
 * >>> concatenate(["a", "b", "c"])
 * "abc"
 */
function concatenate(strings) {
//// solution
  return strings.join("");
}
//// tests
const assert = require("node:assert");
const candidate = concatenate;
assert.deepStrictEqual(candidate([]), "");
assert.deepStrictEqual(candidate(["x", "y", "z"]), "xyz");
assert.deepStrictEqual(candidate(["x", "y", "z", "w", "k"]), "xyzwk");

//// HumanEval/29
//// prompt
/**
 * Filter an input array of strings only for ones that start with a given prefix.
 * >>> filter_by_prefix([], "a")
 * []
 * >>> filter_by_prefix(["abc", "bcd", "cde", "array"], "a")
 * ["abc", "array"]
 */
function filter_by_prefix(strings, prefix) {
//// solution
  return strings.filter((x) => x.startsWith(prefix));
}
//// tests
const assert = require("node:assert");
const candidate = filter_by_prefix;
assert.deepStrictEqual(candidate([], "john"), []);
assert.deepStrictEqual(candidate(["xxx", "asd", "xxy", "john doe", "xxxAAA", "xxx"], "xxx"), ["xxx", "xxxAAA", "xxx"]);

//// HumanEval/30
//// prompt
/**
 * Return only positive numbers in the array.
 * >>> get_positive([-1, 2, -4, 5, 6])
 * [2, 5, 6]
 * >>> get_positive([5, 3, -5, 2, -3, 3, 9, 0, 123, 1, -10])
 * [5, 3, 2, 3, 9, 123, 1]
 */
function get_positive(l) {
//// solution
  return l.filter((e) => e > 0);
}
//// tests
const assert = require("node:assert");
const candidate = get_positive;
assert.deepStrictEqual(candidate([-1, -2, 4, 5, 6]), [4, 5, 6]);
assert.deepStrictEqual(candidate([5, 3, -5, 2, 3, 3, 9, 0, 123, 1, -10]), [5, 3, 2, 3, 3, 9, 123, 1]);
assert.deepStrictEqual(candidate([-1, -2]), []);
assert.deepStrictEqual(candidate([]), []);

//// HumanEval/31
//// prompt
/**
 * Return true if a given number is prime, and false otherwise.
 * >>> is_prime(6)
 * false
 * >>> is_prime(101)
 * true
 * >>> is_prime(11)
 * true
 * >>> is_prime(13441)
 * true
 * >>> is_prime(61)
 * true
 * >>> is_prime(4)
 * false
 * >>> is_prime(1)
 * false
 */
function is_prime(n) {
//// solution
  if (n < 2) {
    return false;
  }
  for (let k = 2; k < n - 1; k++) {
    if (n % k === 0) {
      return false;
    }
  }
  return true;
}
//// tests
const assert = require("node:assert");
const candidate = is_prime;
assert.deepStrictEqual(candidate(6), false);
assert.deepStrictEqual(candidate(101), true);
assert.deepStrictEqual(candidate(11), true);
assert.deepStrictEqual(candidate(13441), true);
assert.deepStrictEqual(candidate(61), true);
assert.deepStrictEqual(candidate(4), false);
assert.deepStrictEqual(candidate(1), false);
assert.deepStrictEqual(candidate(5), true);
assert.deepStrictEqual(candidate(11), true);
assert.deepStrictEqual(candidate(17), true);
assert.deepStrictEqual(candidate(5 * 17), false);
assert.deepStrictEqual(candidate(11 * 7), false);
assert.deepStrictEqual(candidate(13441 * 19), false);

//// HumanEval/33
//// prompt
/**
 * This function takes an array l and returns an array l' such that l' is identical to l in the indices
 * that are not divisible by three, while its values at the indices that are divisible by three are equal
 * to the values of the corresponding indices of l, but sorted.
 * >>> sort_third([1, 2, 3])
 * [1, 2, 3]
 * >>> sort_third([5, 6, 3, 4, 8, 9, 2])
 * [2, 6, 3, 4, 8, 9, 5]
 */
function sort_third(l) {
//// solution
  const thirds = l.filter((_, i) => i % 3 === 0).sort((a, b) => a - b);
  return l.map((x, i) => (i % 3 === 0 ? thirds[i / 3] : x));
}
//// tests
const assert = require("node:assert");
const candidate = sort_third;
assert.deepStrictEqual(candidate([1, 2, 3]), [1, 2, 3]);
assert.deepStrictEqual(candidate([5, 3, -5, 2, -3, 3, 9, 0, 123, 1, -10]), [1, 3, -5, 2, -3, 3, 5, 0, 123, 9, -10]);
assert.deepStrictEqual(candidate([5, 8, -12, 4, 23, 2, 3, 11, 12, -10]), [-10, 8, -12, 3, 23, 2, 4, 11, 12, 5]);
assert.deepStrictEqual(candidate([5, 6, 3, 4, 8, 9, 2]), [2, 6, 3, 4, 8, 9, 5]);
assert.deepStrictEqual(candidate([5, 8, 3, 4, 6, 9, 2]), [2, 8, 3, 4, 6, 9, 5]);
assert.deepStrictEqual(candidate([5, 6, 9, 4, 8, 3, 2]), [2, 6, 9, 4, 8, 3, 5]);
assert.deepStrictEqual(candidate([5, 6, 3, 4, 8, 9, 2, 1]), [2, 6, 3, 4, 8, 9, 5, 1]);

//// HumanEval/34
//// prompt
/**
 * Return sorted unique elements in an array.
 * >>> unique([5, 3, 5, 2, 3, 3, 9, 0, 123])
 * [0, 2, 3, 5, 9, 123]
 */
function unique(l) {
//// solution
  return [...new Set(l)].sort((a, b) => a - b);
}
//// tests
const assert = require("node:assert");
const candidate = unique;
assert.deepStrictEqual(candidate([5, 3, 5, 2, 3, 3, 9, 0, 123]), [0, 2, 3, 5, 9, 123]);

//// HumanEval/35
//// prompt
/**
 * Return maximum element in the array.
 * >>> max_element([1, 2, 3])
 * 3
 * >>> max_element([5, 3, -5, 2, -3, 3, 9, 0, 123, 1, -10])
 * 123
 */
function max_element(l) {
//// solution
  let m = l[0];
  for (const e of l) {
    if (e > m) {
      m = e;
    }
  }
  return m;
}
//// tests
const assert = require("node:assert");
const candidate = max_element;
assert.deepStrictEqual(candidate([1, 2, 3]), 3);
assert.deepStrictEqual(candidate([5, 3, -5, 2, -3, 3, 9, 0, 124, 1, -10]), 124);

//// HumanEval/36
//// prompt
/**
 * Return the number of times the digit 7 appears in integers less than n which are divisible by 11 or 13.
 * >>> fizz_buzz(50)
 * 0
 * >>> fizz_buzz(78)
 * 2
 * >>> fizz_buzz(79)
 * 3
 */
function fizz_buzz(n) {
//// solution
  let s = "";
  for (let i = 0; i < n; i++) {
    if (i % 11 === 0 || i % 13 === 0) {
      s += String(i);
    }
  }
  let ans = 0;
  for (const c of s) {
    if (c === "7") {
      ans += 1;
    }
  }
  return ans;
}
//// tests
const assert = require("node:assert");
const candidate = fizz_buzz;
assert.deepStrictEqual(candidate(50), 0);
assert.deepStrictEqual(candidate(78), 2);
assert.deepStrictEqual(candidate(79), 3);
assert.deepStrictEqual(candidate(100), 3);
assert.deepStrictEqual(candidate(200), 6);
assert.deepStrictEqual(candidate(4000), 192);
assert.deepStrictEqual(candidate(10000), 639);
assert.deepStrictEqual(candidate(100000), 8026);

//// HumanEval/37
//// prompt
/**
 * This function takes an array l and returns an array l' such that l' is identical to l in the odd
 * indices, while its values at the even indices are equal to the values of the even indices of l, but
 * sorted.
 * >>> sort_even([1, 2, 3])
 * [1, 2, 3]
 * >>> sort_even([5, 6, 3, 4])
 * [3, 6, 5, 4]
 */
function sort_even(l) {
//// solution
  const evens = l.filter((_, i) => i % 2 === 0).sort((a, b) => a - b);
  return l.map((x, i) => (i % 2 === 0 ? evens[i / 2] : x));
}
//// tests
const assert = require("node:assert");
const candidate = sort_even;
assert.deepStrictEqual(candidate([1, 2, 3]), [1, 2, 3]);
assert.deepStrictEqual(candidate([5, 3, -5, 2, -3, 3, 9, 0, 123, 1, -10]), [-10, 3, -5, 2, -3, 3, 5, 0, 9, 1, 123]);
assert.deepStrictEqual(candidate([5, 8, -12, 4, 23, 2, 3, 11, 12, -10]), [-12, 8, 3, 4, 5, 2, 12, 11, 23, -10]);

//// HumanEval/39
//// prompt
/**
 * prime_fib returns n-th number that is a Fibonacci number and it's also prime.
 * >>> prime_fib(1)
 * 2
 * >>> prime_fib(2)
 * 3
 * >>> prime_fib(3)
 * 5
 * >>> prime_fib(4)
 * 13
 * >>> prime_fib(5)
 * 89
 */
function prime_fib(n) {
//// solution
  const isPrime = (p) => {
    if (p < 2) {
      return false;
    }
    for (let k = 2; k < Math.min(Math.floor(Math.sqrt(p)) + 1, p - 1); k++) {
      if (p % k === 0) {
        return false;
      }
    }
    return true;
  };
  const f = [0, 1];
  while (true) {
    f.push(f[f.length - 1] + f[f.length - 2]);
    if (isPrime(f[f.length - 1])) {
      n -= 1;
    }
    if (n === 0) {
      return f[f.length - 1];
    }
  }
}
//// tests
const assert = require("node:assert");
const candidate = prime_fib;
assert.deepStrictEqual(candidate(1), 2);
assert.deepStrictEqual(candidate(2), 3);
assert.deepStrictEqual(candidate(3), 5);
assert.deepStrictEqual(candidate(4), 13);
assert.deepStrictEqual(candidate(5), 89);
assert.deepStrictEqual(candidate(6), 233);
assert.deepStrictEqual(candidate(7), 1597);
assert.deepStrictEqual(candidate(8), 28657);
assert.deepStrictEqual(candidate(9), 514229);
assert.deepStrictEqual(candidate(10), 433494437);

//// HumanEval/40
//// prompt
/**
 * triples_sum_to_zero takes an array of integers as an input.
 * It returns true if there are three distinct elements in the array that sum to zero, and false otherwise.
 * >>> triples_sum_to_zero([1, 3, 5, 0])
 * false
 * >>> triples_sum_to_zero([1, 3, -2, 1])
 * true
 * >>> triples_sum_to_zero([1, 2, 3, 7])
 * false
 * >>> triples_sum_to_zero([2, 4, -5, 3, 9, 7])
 * true
 * >>> triples_sum_to_zero([1])
 * false
 */
function triples_sum_to_zero(l) {
//// solution
  for (let i = 0; i < l.length; i++) {
    for (let j = i + 1; j < l.length; j++) {
      for (let k = j + 1; k < l.length; k++) {
        if (l[i] + l[j] + l[k] === 0) {
          return true;
        }
      }
    }
  }
  return false;
}
//// tests
const assert = require("node:assert");
const candidate = triples_sum_to_zero;
assert.deepStrictEqual(candidate([1, 3, 5, 0]), false);
assert.deepStrictEqual(candidate([1, 3, 5, -1]), false);
assert.deepStrictEqual(candidate([1, 3, -2, 1]), true);
assert.deepStrictEqual(candidate([1, 2, 3, 7]), false);
assert.deepStrictEqual(candidate([1, 2, 5, 7]), false);
assert.deepStrictEqual(candidate([2, 4, -5, 3, 9, 7]), true);
assert.deepStrictEqual(candidate([1]), false);
assert.deepStrictEqual(candidate([1, 3, 5, -100]), false);
assert.deepStrictEqual(candidate([100, 3, 5, -100]), false);

//// HumanEval/41
//// prompt
/**
 * Imagine a road that's a perfectly straight infinitely long line.
 * n cars are driving left to right; simultaneously, a different set of n cars are driving right to left.
 * The two sets of cars start out being very far from each other. All cars move in the same speed. Two cars
 * are said to collide when a car that's moving left to right hits a car that's moving right to left.
 * However, the cars are infinitely sturdy and strong; as a result, they continue moving in their
 * trajectory as if they did not collide.
 *
 * This function outputs the number of such collisions.
 */
function car_race_collision(n) {
//// solution
  return n ** 2;
}
//// tests
const assert = require("node:assert");
const candidate = car_race_collision;
assert.deepStrictEqual(candidate(2), 4);
assert.deepStrictEqual(candidate(3), 9);
assert.deepStrictEqual(candidate(4), 16);
assert.deepStrictEqual(candidate(8), 64);
assert.deepStrictEqual(candidate(10), 100);

//// HumanEval/42
//// prompt
/**
 * Return array with elements incremented by 1.
 * >>> incr_list([1, 2, 3])
 * [2, 3, 4]
 * >>> incr_list([5, 3, 5, 2, 3, 3, 9, 0, 123])
 * [6, 4, 6, 3, 4, 4, 10, 1, 124]
 */
function incr_list(l) {
//// solution
  return l.map((e) => e + 1);
}
//// tests
const assert = require("node:assert");
const candidate = incr_list;
assert.deepStrictEqual(candidate([]), []);
assert.deepStrictEqual(candidate([3, 2, 1]), [4, 3, 2]);
assert.deepStrictEqual(candidate([5, 2, 5, 2, 3, 3, 9, 0, 123]), [6, 3, 6, 3, 4, 4, 10, 1, 124]);

//// HumanEval/43
//// prompt
/**
 * pairs_sum_to_zero takes an array of integers as an input.
 * It returns true if there are two distinct elements in the array that sum to zero, and false otherwise.
 * >>> pairs_sum_to_zero([1, 3, 5, 0])
 * false
 * >>> pairs_sum_to_zero([1, 3, -2, 1])
 * false
 * >>> pairs_sum_to_zero([1, 2, 3, 7])
 * false
 * >>> pairs_sum_to_zero([2, 4, -5, 3, 5, 7])
 * true
 * >>> pairs_sum_to_zero([1])
 * false
 */
function pairs_sum_to_zero(l) {
//// solution
  for (let i = 0; i < l.length; i++) {
    for (let j = i + 1; j < l.length; j++) {
      if (l[i] + l[j] === 0) {
        return true;
      }
    }
  }
  return false;
}
//// tests
const assert = require("node:assert");
const candidate = pairs_sum_to_zero;
assert.deepStrictEqual(candidate([1, 3, 5, 0]), false);
assert.deepStrictEqual(candidate([1, 3, -2, 1]), false);
assert.deepStrictEqual(candidate([1, 2, 3, 7]), false);
assert.deepStrictEqual(candidate([2, 4, -5, 3, 5, 7]), true);
assert.deepStrictEqual(candidate([1]), false);
assert.deepStrictEqual(candidate([-3, 9, -1, 3, 2, 30]), true);
assert.deepStrictEqual(candidate([-3, 9, -1, 3, 2, 31]), true);
assert.deepStrictEqual(candidate([-3, 9, -1, 4, 2, 30]), false);
assert.deepStrictEqual(candidate([-3, 9, -1, 4, 2, 31]), false);

//// HumanEval/44
//// prompt
/**
 * Change numerical base of input number x to base.
 * Return string representation after the conversion.
 * Base numbers are less than 10.
 * >>> change_base(8, 3)
 * "22"
 * >>> change_base(8, 2)
 * "1000"
 * >>> change_base(7, 2)
 * "111"
 */
function change_base(x, base) {
//// solution
  let ret = "";
  while (x > 0) {
    ret = String(x % base) + ret;
    x = Math.floor(x / base);
  }
  return ret;
}
//// tests
const assert = require("node:assert");
const candidate = change_base;
assert.deepStrictEqual(candidate(8, 3), "22");
assert.deepStrictEqual(candidate(9, 3), "100");
assert.deepStrictEqual(candidate(234, 2), "11101010");
assert.deepStrictEqual(candidate(16, 2), "10000");
assert.deepStrictEqual(candidate(8, 2), "1000");
assert.deepStrictEqual(candidate(7, 2), "111");
for (let x = 2; x < 8; x++) {
  assert.deepStrictEqual(candidate(x, x + 1), String(x));
}
