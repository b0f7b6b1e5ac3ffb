//! The smallest wasq processor: answers each message with a greeting.

wit_bindgen::generate!({ path: "../../wit", world: "processor" });

struct Hello;

impl Guest for Hello {
    fn handle(message: Message) -> Outcome {
        Outcome::Done(Some(format!("hello, {}", message.body)))
    }
}

export!(Hello);
