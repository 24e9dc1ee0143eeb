// InitNO: a live view of the txt2img prompt's tokens under the "Subjects" box.
//
// Each word shows its text and first context position; the subjects are highlighted (automatic ones
// differently); clicking a word adds it to, or removes it from, the subjects box. The words come from
// the extension's route POST /initno/v1/tokens: {prompt, subjects} -> {tokens, words, subjects} (see
// initno.subjects.report), or 422 {detail} when a subject is not in the prompt.
(() => {
    "use strict";

    const ROUTE = "/initno/v1/tokens";
    const PROMPT = "#txt2img_prompt textarea";
    const SUBJECTS = "#initno_txt2img_subjects textarea";
    const VIEW = "#initno_txt2img_tokens";
    const STEPS = "#txt2img_steps input[type=number]"; // prompt editing ([a:b:0.5]) is read at the first step
    const DEBOUNCE_MS = 300;
    const WATCH_MS = 500; // how often the boxes are compared with what the view shows

    let timer = null;
    let requested = null; // the prompt and subjects the view was last asked for
    let latest = 0; // number of the newest request: older answers are dropped
    let inflight = 0;
    let shown = {words: [], subjects: []}; // what the view shows now, for clicks

    const root = () => (typeof gradioApp === "function" ? gradioApp() : document);
    const find = (selector) => root().querySelector(selector);

    function viewElement() {
        const view = find(VIEW);
        // gradio 3.41's HTML component: a block with the elem_id around a `.prose` div (with the same id).
        return view && (view.querySelector(".prose") || view);
    }

    function render(children) {
        const view = viewElement();
        if (!view) return;
        const box = document.createElement("div");
        box.className = "initno-tokens";
        box.append(...children);
        view.replaceChildren(box);
    }

    function renderWords(data) {
        const words = data.words; // grouped by the server (PromptTokens.words), one concept in one place
        const owner = new Map();
        for (const subject of data.subjects) for (const p of subject.positions) owner.set(p, subject);
        shown = {words, subjects: data.subjects};
        const list = document.createElement("div");
        list.className = "initno-words";
        list.setAttribute("role", "group");
        list.setAttribute("aria-label", "Prompt words and their token positions; click a word to toggle it as a subject");
        words.forEach((word, index) => {
            const subject = word.positions.map((p) => owner.get(p)).find(Boolean);
            const button = document.createElement("button");
            button.type = "button";
            button.className = "initno-word";
            if (subject) button.classList.add("initno-subject");
            if (subject && subject.auto) button.classList.add("initno-auto");
            if (word.embedding) button.classList.add("initno-embedding");
            button.dataset.index = String(index);
            button.setAttribute("aria-pressed", subject ? "true" : "false");
            button.disabled = word.text.includes(","); // a comma cannot be typed as a subject
            const where = word.positions.length > 1 ? `positions ${word.positions.join(", ")}` : `position ${word.positions[0]}`;
            button.title = subject ? `${where}; subject${subject.auto ? " (automatic)" : ""}` : where;
            const position = document.createElement("sup");
            position.className = "initno-position";
            position.textContent = String(word.positions[0]);
            button.append(word.text, position);
            list.append(button);
        });
        const children = [list];
        if (data.unsupported) {
            const note = document.createElement("div");
            note.className = "initno-error";
            note.textContent = `InitNO will be skipped: ${data.unsupported}`;
            children.push(note);
        }
        render(children);
    }

    function renderError(message) {
        shown = {words: [], subjects: []};
        const error = document.createElement("div");
        error.className = "initno-error";
        error.setAttribute("role", "alert");
        error.textContent = message;
        render([error]);
    }

    async function refresh() {
        clearTimeout(timer);
        timer = null;
        const number = ++latest;
        const prompt = find(PROMPT);
        const subjects = find(SUBJECTS);
        if (!prompt || !subjects || !viewElement()) return;
        requested = boxValues(prompt, subjects);
        if (!prompt.value.trim() && !subjects.value.trim()) {
            shown = {words: [], subjects: []};
            render([]);
            return;
        }
        const request = {prompt: prompt.value, subjects: subjects.value};
        const steps = parseInt(find(STEPS)?.value, 10);
        if (steps > 0) request.steps = steps;
        inflight++;
        try {
            let data, failure;
            try {
                const response = await fetch(ROUTE, {
                    method: "POST",
                    headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(request),
                });
                const body = await response.json().catch(() => null);
                if (response.ok && body) data = body;
                else failure = (body && typeof body.detail === "string" && body.detail) || `token view: HTTP ${response.status}`;
            } catch (error) {
                failure = `token view: ${error.message || error}`;
            }
            if (number !== latest) return; // a newer request was made meanwhile
            if (data) renderWords(data);
            else renderError(failure);
        } finally {
            inflight--;
        }
    }

    function schedule() {
        clearTimeout(timer);
        timer = setTimeout(refresh, DEBOUNCE_MS);
    }

    const boxValues = (prompt, subjects) => `${prompt.value}\u0000${subjects.value}`;

    // Gradio sets a box's value without an input event when the WebUI changes it (pasting an infotext,
    // "Send to txt2img", applying a style): the view follows such changes too.
    function watch() {
        const prompt = find(PROMPT);
        const subjects = find(SUBJECTS);
        if (prompt && subjects && timer === null && boxValues(prompt, subjects) !== requested) schedule();
    }

    // The subjects box text with `word` added, or removed when it is already a subject (by its text, or as
    // part of a typed subject that covers it, such as "red apple" or "#5").
    function toggled(text, word) {
        let items = text.split(",").map((s) => s.trim()).filter(Boolean);
        if (!items.length && shown.subjects.some((s) => s.auto)) items = shown.subjects.map((s) => s.text);
        const same = (a, b) => a.trim().toLowerCase() === b.trim().toLowerCase();
        let index = items.findIndex((item) => same(item, word.text));
        if (index < 0) {
            const covering = shown.subjects.find((s) => s.positions.some((p) => word.positions.includes(p)));
            if (covering) index = items.findIndex((item) => same(item, covering.text));
        }
        if (index >= 0) items.splice(index, 1);
        else items.push(word.text.trim());
        return items.join(", ");
    }

    function onClick(event) {
        const button = event.target.closest && event.target.closest(".initno-word");
        const word = button && shown.words[Number(button.dataset.index)];
        const subjects = find(SUBJECTS);
        if (!word || !subjects) return;
        subjects.value = toggled(subjects.value, word);
        if (typeof updateInput === "function") updateInput(subjects); // A1111's way: gradio sees the change
        else subjects.dispatchEvent(new Event("input", {bubbles: true}));
        refresh();
    }

    function onInput(event) {
        const target = event.target;
        if (target && target.matches && (target.matches(PROMPT) || target.matches(SUBJECTS))) schedule();
    }

    function start() {
        const app = root();
        app.addEventListener("input", onInput); // delegated: works however gradio re-creates the boxes
        app.addEventListener("click", (event) => {
            if (viewElement()?.contains(event.target)) onClick(event);
        });
        setInterval(watch, WATCH_MS);
        refresh();
    }

    window.initnoTokenView = {
        refresh,
        get busy() { // a request in flight or waiting for the debounce (used by the tests)
            return inflight > 0 || timer !== null;
        },
    };

    if (typeof onUiLoaded === "function") onUiLoaded(start);
    else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
})();
